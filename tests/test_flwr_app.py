"""The Flower app bundle (FAB) that ``flwr run .`` builds from ``pyproject.toml`` holds every
file of fedll's packages: under ``flwr run`` and in deployment the ServerApp and ClientApp
import fedll from the bundle, so a file the packages read at run time (a report template, say)
that Flower leaves out is a crash at the end of a deployed trial.

Flower builds the bundle (its own ``build_fab_from_disk``) from the files
``[tool.flwr.app] fab-include`` names; Flower admits only some kinds of file (Python, TOML,
Markdown, YAML, JSON), whatever the patterns say.
"""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk
from test_flwr_parity import REPO, copy_app

PACKAGES = ("fedll", "sites", "strategies")


def _tracked(*folders: str) -> set[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", *folders],
        cwd=REPO,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return {name for name in listed.split("\0") if name and (REPO / name).is_file()}


def test_the_app_bundle_holds_every_file_of_the_packages(tmp_path: Path) -> None:
    bundle = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(copy_app(tmp_path / "app"))))
    held = set(bundle.namelist())
    needed = _tracked(*PACKAGES)
    assert any(name.startswith("fedll/report/") for name in needed)
    missing = sorted(needed - held)
    assert not missing, f"files of fedll's packages the Flower app leaves out: {missing}"
    # and the scenarios the docs run with `flwr run .`
    assert "scenarios/quickstart.yaml" in held
