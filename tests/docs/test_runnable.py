"""Every shell block the docs mark runnable (``<!-- runnable -->`` before a ```bash fence)
runs: a page's blocks in order, in one fresh folder holding a link to ``scenarios/``, with this
interpreter's environment first on the PATH and the session's cohort cache. Blocks that run a
scenario take tiny settings (``--set`` or their own tiny scenario file); those pages are slow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from docgen.runnable import MARKER, Block, blocks, pages

ROOT = Path(__file__).resolve().parents[2]
BLOCK_SECONDS = 600
SCENARIO_RUN = re.compile(r"\bfedll (run|cohort|segment|site-data)\b")


def runs_a_scenario(block: Block) -> bool:
    """Whether a block trains or synthesises anything (a dry run does neither)."""
    return any(
        SCENARIO_RUN.search(line) and "--dry-run" not in line for line in block.code.splitlines()
    )


def page_params() -> list:
    params = []
    for page in pages(ROOT):
        slow = any(runs_a_scenario(b) for b in blocks(page))
        marks = [pytest.mark.slow] if slow else []
        params.append(pytest.param(page, marks=marks, id=page.relative_to(ROOT).as_posix()))
    return params


def test_the_docs_have_runnable_blocks():
    found = [p.relative_to(ROOT).as_posix() for p in pages(ROOT)]
    assert "docs/getting-started/quickstart.md" in found
    assert "docs/tutorials/own-cohort.md" in found


@pytest.mark.parametrize("page", page_params())
def test_the_runnable_blocks_run(page: Path, tmp_path: Path, fedll_cache: Path):
    (tmp_path / "scenarios").symlink_to(ROOT / "scenarios")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "XDG_CACHE_HOME": str(fedll_cache),
        "NO_COLOR": "1",
        "COLUMNS": "120",
    }
    for block in blocks(page):
        where = f"{page.relative_to(ROOT)}:{block.line}"
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_SECONDS,
        )
        assert done.returncode == 0, f"{where} exited {done.returncode}:\n{done.stderr[-3000:]}"


def test_blocks_are_read_in_order_and_a_stray_marker_is_an_error(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        f"text\n{MARKER}\n```bash\necho one\necho two\n```\n\n```bash\nnot marked\n```\n"
        f"{MARKER}\n\n```sh\necho three\n```\n"
    )
    found = blocks(page)
    assert [(b.line, b.code) for b in found] == [(3, "echo one\necho two\n"), (13, "echo three\n")]
    page.write_text(f"{MARKER}\n```yaml\na: 1\n```\n")
    with pytest.raises(ValueError, match="page.md:1: .* must be followed by a ```bash block"):
        blocks(page)
    page.write_text(f"{MARKER}\n```bash\necho never closed\n")
    with pytest.raises(ValueError, match="page.md:2: the runnable block is never closed"):
        blocks(page)


def test_a_failing_block_fails(tmp_path: Path):
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", "false | cat\necho after\n"])
    assert done.returncode != 0  # pipefail: a failing command in a pipe stops the block
