"""One trial run from memory in this process: fedll's Flower app, loaded by reference.

:func:`execute_task` runs a trial's ServerApp and ClientApp (fedll's Flower app, declared in
``[tool.flwr.app.components]``; here their factories) through an
:class:`~fedll.federation.inprocess.InProcessGrid` and returns its outcome; the sweep's
workers run it (:mod:`fedll.run.backends`). :func:`run_trial` runs one trial of a run
directory and writes its files, as a sweep's driver does. This is the one place fedll's core
reaches the apps, by reference, so that it never imports them (tests/test_layering.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from fedll.config import expand_trials, load_scenario
from fedll.config.grid import trial_fingerprint
from fedll.data.arrays import CohortArrays
from fedll.data.prepare import cohort_for
from fedll.results.rows import TrialOutcome
from fedll.run.checkpoint import Checkpointing
from fedll.run.device import resolve_device
from fedll.run.run_dir import RESOLVED_SCENARIO
from fedll.run.trial_task import SweepTrial, TrialDone, TrialTask, keep_trial

# fedll's Flower app (pyproject.toml, [tool.flwr.app.components]) by its factories, which
# take the trial's in-memory inputs and the sweep's callbacks: the one place fedll's core
# reaches the apps (by reference, so that it never imports them; tests/test_layering.py)
CLIENT_APP_FACTORY = "sites.client_app:make_client_app"
SERVER_APP_FACTORY = "strategies.server_app:make_server_app"


def execute_task(
    task: TrialTask,
    cohort: CohortArrays,
    on_round: Callable[[int, int], None] | None = None,
    on_checkpoint: Callable[[int, bytes], None] | None = None,
) -> TrialDone:
    """Run one trial in this process from memory; returns its outcome (nothing is written).

    The ServerApp and the ClientApp are fedll's Flower app, loaded by the references the app
    declares (``[tool.flwr.app.components]``; here their factories), so the sweep runs what
    ``flwr run`` runs, through an :class:`~fedll.federation.inprocess.InProcessGrid`. Checkpoints
    (``execution.checkpoint_every``) reach ``on_checkpoint`` as (round, bytes).
    """
    from fedll.federation.inprocess import (
        InProcessGrid,
        load_reference,
        run_server_app,
        simulation_node_configs,
    )
    from fedll.run.checkpoint import decode, encode
    from fedll.run.device import arithmetic

    started = time.perf_counter()
    torch.set_num_threads(max(1, task.threads))
    scenario = task.scenario
    trial = expand_trials(scenario)[task.index]
    fingerprint = trial_fingerprint(scenario, trial)
    resume = None if task.resume is None else decode(task.resume, f"checkpoint of {trial.trial_id}")
    save = None
    if on_checkpoint is not None:
        save = lambda checkpoint: on_checkpoint(checkpoint.round, encode(checkpoint))  # noqa: E731
    checkpointing = Checkpointing(scenario.execution.checkpoint_every, fingerprint, save, resume)
    outcomes: list[TrialOutcome] = []
    sweep_trial = SweepTrial(
        scenario=scenario,
        trial=trial,
        cohort=cohort,
        device=resolve_device(task.device),
        threads=task.threads,
        finished=outcomes.append,
        checkpointing=checkpointing,
    )
    run_config = {"threads": task.threads}
    grid = InProcessGrid(
        load_reference(CLIENT_APP_FACTORY)(cohort, task.device),
        simulation_node_configs(len(scenario.sites)),
        run_config,
        seed=trial.seed,
    )
    run_server_app(load_reference(SERVER_APP_FACTORY)(on_round, sweep_trial), grid, run_config)
    if not outcomes:
        raise RuntimeError(f"trial {trial.trial_id}: the ServerApp returned no outcome")
    ran = arithmetic(sweep_trial.device, scenario.training.precision, scenario.evaluation.precision)
    return TrialDone(outcomes[0], time.perf_counter() - started, ran)


def run_trial(
    run_dir: Path,
    trial_index: int,
    threads: int,
    on_round: Callable[[int, int], None] | None = None,
) -> Path:
    """Run one trial of ``RUN_DIR/scenario.yaml`` in this process and write its files (as a
    sweep's driver does); returns its results file."""
    run_dir = Path(run_dir)
    scenario = load_scenario(run_dir / RESOLVED_SCENARIO)
    cohort = CohortArrays.load(cohort_for(run_dir, scenario))
    trial = expand_trials(scenario)[trial_index]
    task = TrialTask(scenario, trial_index, threads, device=scenario.execution.device)
    done = execute_task(task, cohort, on_round)
    return keep_trial(run_dir, scenario, trial, done.outcome, done.wall_s, done.arithmetic)


def warm_up() -> None:
    """Import what a trial runs (torch, Flower, fedll's apps, scipy's distance transforms for
    the metrics): seconds that a fresh worker otherwise spends inside its first trial. MONAI
    is not among them: fedll computes its metrics' numbers without it."""
    import importlib

    from fedll.federation.inprocess import load_reference

    load_reference(CLIENT_APP_FACTORY)
    load_reference(SERVER_APP_FACTORY)
    importlib.import_module("scipy.ndimage")
