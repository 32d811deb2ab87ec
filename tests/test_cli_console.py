"""fedll's output where stdout is not a terminal (a pipe, a file, CI's log): whole lines, not
wrapped or cut at 80 columns, and no name in the trial list cut into ambiguity."""

from __future__ import annotations

import os
import subprocess
import sys

from fedll.cli import PIPED_COLUMNS, piped_width

LONG = "dycnn-modality-hard-norm-and-some-more-words"


def test_a_pipe_gets_a_wide_width_and_an_asked_width_is_kept():
    assert piped_width({}, stdout_is_terminal=False) == {"COLUMNS": str(PIPED_COLUMNS)}
    assert piped_width({"COLUMNS": "90"}, stdout_is_terminal=False) == {"COLUMNS": "90"}
    assert piped_width({}, stdout_is_terminal=True) == {}


def fedll(*args: str, columns: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns:
        env["COLUMNS"] = columns
    out = subprocess.run(
        [sys.executable, "-m", "fedll.cli", *args], capture_output=True, text=True, env=env,
        check=True, timeout=120,
    )  # fmt: skip
    return out.stdout


def test_the_dry_run_table_keeps_long_names_whole_in_a_pipe_and_a_narrow_terminal(
    write_scenario,
):
    scenario = write_scenario({"models": {LONG: {"name": "dycnn", "base_width": 4}}})
    piped = fedll("run", str(scenario), "--dry-run")
    row = next(line for line in piped.splitlines() if LONG in line)
    assert len(row) > 80  # one line, wider than the 80 columns rich would cut it to
    narrow = fedll("run", str(scenario), "--dry-run", columns="60")
    assert "…" not in narrow  # folded onto more lines, never an ellipsis
    assert LONG.replace("-", "") in "".join(
        cell.strip() for line in narrow.splitlines() for cell in line.split("│")[2:3]
    ).replace("-", "")


def test_help_in_a_pipe_is_not_cut_at_80_columns():
    text = fedll("run", "--help")
    assert "run directory (default runs/<name>)" in text  # one line, not wrapped
    assert max(len(line) for line in text.splitlines()) <= 100
