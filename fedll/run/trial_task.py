"""One trial as the sweep and the Flower apps pass it between them: what a trial is given
(:class:`TrialTask` from the driver, :class:`SweepTrial` to the ServerApp), what it gives back
(:class:`TrialDone`), and how the driver keeps a finished trial's files (:func:`keep_trial`).

Both sides import this module, never each other: the sweep (:mod:`fedll.run.sweep`) starts the
apps by the references fedll's Flower app declares, and the ServerApp
(:mod:`strategies.server_app`) runs a :class:`SweepTrial` and, under ``flwr run``, keeps its
files itself; so the trial path is one way, driver -> apps -> this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fedll.config import Scenario, Trial
from fedll.config.grid import trial_fingerprint
from fedll.data.arrays import CohortArrays
from fedll.results.rows import TrialOutcome
from fedll.run.checkpoint import Checkpointing
from fedll.run.store import drop_checkpoint, write_trial


@dataclass(frozen=True)
class TrialTask:
    """Everything a trial needs besides the cohort's slices: the resolved scenario, which of
    its trials, how to run it, and the checkpoint to resume from (encoded), if any."""

    scenario: Scenario
    index: int
    threads: int = 1
    device: str = "cpu"
    resume: bytes | None = None


@dataclass(frozen=True)
class TrialDone:
    """A finished trial's outcome, the seconds it ran and the arithmetic it ran on
    (:func:`fedll.run.device.arithmetic`), as its task returns them."""

    outcome: TrialOutcome
    wall_s: float
    arithmetic: str | None = None


@dataclass(frozen=True)
class SweepTrial:
    """A trial a sweep runs in this process: its inputs in memory, its outcome to a callback.

    No path of the driver's machine is read or written: the scenario, the trial and the
    cohort's slices came with the task, and ``finished`` hands the outcome back."""

    scenario: Scenario
    trial: Trial
    cohort: CohortArrays
    device: torch.device
    threads: int
    finished: Callable[[TrialOutcome], None]
    checkpointing: Checkpointing | None = None


def keep_trial(
    run_dir: Path,
    scenario: Scenario,
    trial: Trial,
    outcome: TrialOutcome,
    wall_s: float | None = None,
    arithmetic: str | None = None,
) -> Path:
    """Write a finished trial's files, its kept model among them unless the scenario's
    ``execution.keep_models`` is false (the driver alone does), and drop its checkpoint;
    returns its results file. ``wall_s`` and ``arithmetic`` go to the seal."""
    from fedll.models.saved import encode_model

    fingerprint = trial_fingerprint(scenario, trial)
    model = None
    if scenario.execution.keep_models:
        model = encode_model(
            outcome.state, scenario.models[trial.model], scenario.slices, trial.trial_id,
            fingerprint,
        )  # fmt: skip
    path = write_trial(
        run_dir, outcome.results, fingerprint, model=model, wall_s=wall_s, arithmetic=arithmetic
    )
    drop_checkpoint(run_dir, trial.trial_id)
    return path
