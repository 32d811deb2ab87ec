"""The ServerApp as ``flwr run`` runs it, here over an in-process grid of deployed sites (node
configs with a data dir): a trial checkpointed after every round, crashed, and run again
resumes after its last checkpoint, the sites reloading the state they kept on their disks, and
gives the files of an uninterrupted run byte for byte."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from fedll.config import expand_trials, load_scenario
from fedll.data.prepare import prepare_cohort
from fedll.deploy.site_data import write_site_manifests
from fedll.federation.inprocess import InProcessGrid, run_server_app
from fedll.federation.site_state import DATA_DIR_FOLDER
from fedll.run.checkpoint import decode, encode
from fedll.run.store import checkpoint_path, write_checkpoint
from sites.client_app import app as client_app
from strategies.server_app import make_server_app

# four rounds (T2, FLAIR, T2, FLAIR), state on both sides: server momentum, and at the sites
# Adam's moments and a replay buffer
FOUR_ROUNDS = {
    "models": {"dycnn": None},
    "strategies": [{"name": "fedavgm", "server_momentum": 0.5}],
    "cl": [{"name": "replay", "buffer": 2}],
    "training": {"epochs": 2, "batch_size": 4, "lr": 0.01, "optimizer_state": "keep"},
}


class Crash(Exception):
    """The ServerApp's process dies (here: after scoring round 3)."""


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def outputs(run_dir: Path) -> dict[str, bytes]:
    files = [run_dir / "results.csv", run_dir / "attention.csv", *run_dir.glob("models/*")]
    return {p.name: p.read_bytes() for p in files}


def deployed(tmp_path: Path, make_scenario):
    """The four-round trial with its sites' data folders (deployed node configs), and
    ``run(run_dir, seed, crash_at=None)``: the trial under ``flwr run``'s ServerApp on a fresh
    grid (new run id, node ids and empty node contexts, as SuperNodes restarted), raising
    :class:`Crash` after scoring round ``crash_at``; it returns the rounds it scored."""
    source = make_scenario(tmp_path / "scenario.yaml", FOUR_ROUNDS)
    scenario = load_scenario(source)
    (trial,) = expand_trials(scenario)
    folders = {
        site: path.parent
        for site, path in write_site_manifests(prepare_cohort(scenario), tmp_path / "sites").items()
    }
    node_configs = [
        {"site": s.name, "modality": s.modality, "data-dir": str(folders[s.name])}
        for s in scenario.sites
    ]

    def run(run_dir: Path, seed: int, crash_at: int | None = None) -> list[int]:
        """The trial under ``flwr run``'s ServerApp on a fresh grid (new run id, node ids and
        empty node contexts, as SuperNodes restarted); the rounds it scored."""
        scored: list[int] = []

        def on_round(server_round: int, rounds: int) -> None:
            scored.append(server_round)
            if server_round == crash_at:
                raise Crash

        run_config = {"scenario": str(source), "run-dir": str(run_dir), "threads": 1}
        grid = InProcessGrid(client_app, node_configs, run_config, seed=seed)
        run_server_app(make_server_app(on_round=on_round), grid, run_config)
        return scored

    return source, trial, folders, run


def test_a_crashed_serverapp_resumes_after_its_checkpoint_with_the_sites_state(
    tmp_path, make_scenario, caplog, restore_torch_threads
):
    _, trial, folders, run = deployed(tmp_path, make_scenario)

    assert run(tmp_path / "whole", seed=7) == [0, 1, 2, 3, 4]
    uninterrupted = outputs(tmp_path / "whole")
    for folder in folders.values():
        (kept,) = (folder / DATA_DIR_FOLDER).iterdir()
        assert kept.name.startswith(trial.trial_id)
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600

    run_dir = tmp_path / "crashed"
    with pytest.raises(Crash):
        run(run_dir, seed=8, crash_at=3)  # round 3 trained (the T2 site kept it), not saved
    assert checkpoint_path(run_dir, trial.trial_id).exists()
    assert not (run_dir / "results.csv").exists()
    with caplog.at_level(logging.INFO):
        assert run(run_dir, seed=9) == [3, 4]  # resumed after round 2

    assert f"trial {trial.trial_id} resumes after round 2" in caplog.text
    # each site took the state it had before the round it ran again (T2: after round 1, not
    # the round 3 it had trained before the crash) ...
    assert "site hospital-t2: state of round 1 reloaded" in caplog.text
    assert "site hospital-flair: state of round 2 reloaded" in caplog.text
    # ... and no run took up the state of the uninterrupted run, another run of the trial
    assert "kept for federation" in caplog.text
    assert not checkpoint_path(run_dir, trial.trial_id).exists()
    assert outputs(run_dir) == uninterrupted


def test_without_the_sites_state_a_resumed_trial_would_differ(
    tmp_path, make_scenario, restore_torch_threads
):
    """The check above has teeth: the same crash, the sites' kept state deleted before the
    run resumes, gives other results (the replay buffers and Adam's moments start empty)."""
    _, _, folders, run = deployed(tmp_path, make_scenario)
    run(tmp_path / "whole", seed=7)
    with pytest.raises(Crash):
        run(tmp_path / "crashed", seed=7, crash_at=3)
    for folder in folders.values():
        shutil.rmtree(folder / DATA_DIR_FOLDER)
    run(tmp_path / "crashed", seed=8)
    assert outputs(tmp_path / "whole") != outputs(tmp_path / "crashed")


def test_a_checkpoint_that_does_not_fit_is_set_aside_and_the_trial_runs_from_round_0(
    tmp_path, make_scenario, caplog, restore_torch_threads
):
    """A kept checkpoint whose model has a wrong-shaped array (it decodes, the settings
    match) is refused as the trial resumes: moved to checkpoints/invalid/, and the trial runs
    whole, giving the files of an uninterrupted run."""
    _, trial, folders, run = deployed(tmp_path, make_scenario)

    run(tmp_path / "whole", seed=7)
    uninterrupted = outputs(tmp_path / "whole")
    run_dir = tmp_path / "crashed"
    with pytest.raises(Crash):
        run(run_dir, seed=8, crash_at=3)
    path = checkpoint_path(run_dir, trial.trial_id)
    kept = decode(path.read_bytes(), str(path))
    name = next(iter(kept.model))
    model = {**kept.model, name: np.zeros((1, 2, 3), dtype=np.float32)}
    write_checkpoint(run_dir, trial.trial_id, encode(dataclasses.replace(kept, model=model)))

    with caplog.at_level(logging.WARNING):
        assert run(run_dir, seed=9) == [0, 1, 2, 3, 4]
    assert (run_dir / "checkpoints" / "invalid" / path.name).is_file()
    assert f"its model's {name!r} is float32[1, 2, 3]" in caplog.text
    assert "the trial starts from round 0" in caplog.text
    assert outputs(run_dir) == uninterrupted
