"""Mid-trial checkpoints for real: `fedll run` killed with SIGKILL in the middle of a trial,
with `--local` and with Ray, resumes the trial from its latest checkpoint, says so, and gives
the tables and results of an uninterrupted run byte for byte."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedll.config import expand_trials, load_scenario
from fedll.run.store import checkpoint_path

pytestmark = pytest.mark.slow

# one trial (the Dy-CNN, FedAvgM, replay; optimiser moments kept), its four rounds slow
# enough (a second or more each) to be killed in the middle of: the kill follows the first
# checkpoint within a poll of 0.05 s
LONG = {
    "models": {"static": None},
    "strategies": [{"name": "fedavgm", "server_momentum": 0.5}],
    "cl": [{"name": "replay", "buffer": 1}],
    "training": {"epochs": 8, "batch_size": 4, "lr": 0.01, "optimizer_state": "keep"},
    "execution": {"checkpoint_every": 1},
}


def outputs(run_dir: Path) -> dict[str, bytes]:
    files = [run_dir / "results.csv", run_dir / "attention.csv"]
    files += sorted((run_dir / "tables").glob("forgetting.*"))
    return {p.name: p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, make_scenario, run_fedll):
    root = tmp_path_factory.mktemp("whole")
    scenario = make_scenario(root / "s.yaml", {**LONG, "execution": {"checkpoint_every": 0}})
    done = run_fedll("run", scenario, "--out", root / "run", "--local", cwd=root)
    assert done.returncode == 0, done.stderr
    return outputs(root / "run")


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_a_trial_killed_mid_way_resumes_from_its_checkpoint(
    backend, uninterrupted, make_scenario, tmp_path, spawn_fedll, run_fedll
):
    scenario_path = make_scenario(tmp_path / "s.yaml", LONG)
    run_dir = tmp_path / "run"
    local = ["--local"] if backend == "local" else []
    proc = spawn_fedll("run", str(scenario_path), "--out", str(run_dir), *local)
    (trial,) = expand_trials(load_scenario(scenario_path))
    kept = checkpoint_path(run_dir, trial.trial_id)
    deadline = time.monotonic() + 240
    while not kept.exists():
        assert proc.running(), f"fedll exited before a checkpoint:\n{proc.stderr}"
        assert time.monotonic() < deadline, f"no checkpoint in 240 s:\n{proc.stderr}"
        time.sleep(0.05)
    assert proc.running(), "the run finished before it could be killed"
    assert proc.kill() == [], "processes outlived SIGKILL of the session"
    assert not (run_dir / "trials" / f"{trial.trial_id}.json").exists()  # killed mid-trial

    rerun = spawn_fedll("run", str(scenario_path), "--out", str(run_dir), *local)
    assert rerun.wait(timeout=300) == 0, rerun.stderr
    assert f"resumed {trial.trial_id} from round " in rerun.stdout
    resumed = int(rerun.stdout.split(f"resumed {trial.trial_id} from round ")[1].split()[0])
    assert 1 <= resumed < 4
    assert not kept.exists()  # a finished trial needs its checkpoint no more
    assert outputs(run_dir) == uninterrupted


def test_a_checkpoint_of_other_settings_is_set_aside(
    uninterrupted, make_scenario, tmp_path, run_fedll
):
    scenario_path = make_scenario(tmp_path / "s.yaml", LONG)
    (trial,) = expand_trials(load_scenario(scenario_path))
    run_dir = tmp_path / "run"
    kept = checkpoint_path(run_dir, trial.trial_id)
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"cut short")
    done = run_fedll("run", scenario_path, "--out", run_dir, "--local", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "not a fedll checkpoint" in done.stderr and "resumed" not in done.stdout
    assert (kept.parent / "invalid" / kept.name).read_bytes() == b"cut short"
    assert outputs(run_dir) == uninterrupted
