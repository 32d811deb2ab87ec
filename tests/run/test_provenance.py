"""The run's provenance: versions, git revision and the machine, kept as provenance.json."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch

import fedll
from fedll.run.device import cpu_model
from fedll.run.provenance import git_revision, machine_provenance, read_provenance, write_provenance


def test_machine_provenance_names_the_versions_and_the_machine() -> None:
    info = machine_provenance()
    assert info["fedll"] == fedll.__version__
    assert info["python"] == platform.python_version()
    assert info["cpus"] == os.cpu_count()
    assert set(info["packages"]) >= {"torch", "flwr", "ray"}
    assert info["packages"]["pandas"] is not None
    assert info["packages"]["pandas"].split(".")[0].isdigit()
    assert info["arithmetic"].startswith(f"cpu {torch.backends.cpu.get_cpu_capability()}, ")


def test_the_cpu_model_is_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Some CPU 9000\n")
    assert cpu_model(cpuinfo) == "Some CPU 9000"
    assert cpu_model(tmp_path / "missing") == (platform.processor() or "unknown")


def test_git_revision_of_a_checkout_and_of_a_plain_folder(tmp_path: Path) -> None:
    assert git_revision(tmp_path) is None
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert head.startswith(git_revision(repo))
    (repo / "f").write_text("x")
    subprocess.run(["git", "add", "f"], cwd=repo, check=True)
    assert git_revision(repo).endswith("-dirty")


def test_provenance_file_round_trip(tmp_path: Path) -> None:
    assert read_provenance(tmp_path) is None
    path = write_provenance(tmp_path)
    assert read_provenance(tmp_path) == json.loads(path.read_text())
    assert read_provenance(tmp_path)["fedll"] == fedll.__version__
