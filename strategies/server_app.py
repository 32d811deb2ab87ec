"""The Flower ServerApp: one trial of a scenario, named by the run config.

A sweep's trial (:class:`SweepTrial`) reads nothing from disk and writes nothing: its inputs
came with it and its outcome goes back to the sweep's driver, which writes the run directory.
Under ``flwr run`` the run config names the files. A joint trial (the upper bound) trains
one model on the pooled cases in this process, without the grid (:mod:`fedll.federation.joint`).

Run config keys (kebab-case, from ``[tool.flwr.app.config]``, ``flwr run --run-config``
or a sweep): ``scenario`` (path of the scenario YAML), ``trial`` (index into its grid, or
a trial id), ``run-dir`` (where results go), ``threads`` (torch threads), ``collect`` (rebuild
``RUN_DIR/results.csv`` and the report after the trial; a sweep does it once at the end instead).
The cohort split is read from ``RUN_DIR/cohort.json`` when a sweep prepared it, and prepared here
otherwise (on the coordinator: in deployment, the held-out test sets live there). The resolved
scenario is kept as ``RUN_DIR/scenario.yaml``, as ``fedll run`` keeps it, and the trial's final
model as ``RUN_DIR/models/<trial id>.safetensors`` (:mod:`fedll.models.saved`).

Under ``flwr run`` a federated trial is checkpointed after every round but the last, into
``RUN_DIR/checkpoints/<trial id>.ckpt`` (the server's side: model, strategy state, RNG states,
results; the sites keep theirs, :mod:`fedll.federation.site_state`): the same ``flwr run`` again,
after a crash of the ServerApp or the SuperLink, resumes the trial at the round after its checkpoint
and gives the results of an uninterrupted run. A checkpoint of other settings, or one that
does not fit the trial (:func:`fedll.run.checkpoint.verify`), is set aside and the trial runs
from round 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedll.config import Scenario, Trial, dump_scenario, expand_trials, load_scenario
from fedll.config.grid import trial_fingerprint
from fedll.data.arrays import CohortArrays
from fedll.data.prepare import cohort_for
from fedll.errors import ConfigError
from fedll.federation.joint import run_joint
from fedll.report.build import build_report
from fedll.results.rows import TrialOutcome
from fedll.run.checkpoint import Checkpoint, CheckpointError, Checkpointing, decode, encode
from fedll.run.collect import collect
from fedll.run.device import arithmetic, deterministic, resolve_device
from fedll.run.lock import hold_run_dir
from fedll.run.store import (
    checkpoint_path,
    read_checkpoint,
    set_aside_checkpoint,
    write_checkpoint,
)
from fedll.run.trial_task import SweepTrial, keep_trial
from strategies.federation import RoundCallback, run_federation
from strategies.flower_log import without_false_lines

logger = logging.getLogger(__name__)


def trial_from_run_config(run_config: Mapping[str, object]) -> tuple[Scenario, Trial, Path]:
    """Scenario, trial and run directory named by a ServerApp's run config."""
    for key in ("scenario", "run-dir"):
        if key not in run_config:
            raise ConfigError(f"run config: missing {key!r}")
    scenario = load_scenario(Path(str(run_config["scenario"])))
    trials = expand_trials(scenario)
    wanted = run_config.get("trial", 0)
    if isinstance(wanted, int) or str(wanted).isdigit():
        index = int(wanted)
        if not 0 <= index < len(trials):
            raise ConfigError(
                f"run config: trial {index} out of range (the scenario has {len(trials)})"
            )
        trial = trials[index]
    else:
        matches = [t for t in trials if t.trial_id == wanted]
        if not matches:
            raise ConfigError(f"run config: no trial {wanted!r} in the scenario")
        trial = matches[0]
    return scenario, trial, Path(str(run_config["run-dir"]))


def execute_trial(
    grid: Grid,
    scenario: Scenario,
    trial: Trial,
    cohort: CohortArrays,
    device: torch.device,
    threads: int = 1,
    on_round: RoundCallback | None = None,
    checkpointing: Checkpointing | None = None,
) -> TrialOutcome:
    """Run ``trial``: the joint bound in this process, or a federation over ``grid``."""
    with deterministic(scenario.execution.deterministic):
        if trial.kind == "joint":  # the upper bound: no stream, no federation
            return run_joint(scenario, trial, cohort, device, threads=threads, on_round=on_round)
        return run_federation(
            grid,
            scenario,
            trial,
            cohort.test,
            device,
            threads=threads,
            on_round=on_round,
            checkpointing=checkpointing,
        )


def round_checkpoints(run_dir: Path, scenario: Scenario, trial: Trial) -> Checkpointing:
    """Checkpoints of ``trial`` after every round in ``RUN_DIR/checkpoints`` (the server's
    side only: the sites keep their own state), resuming from the one kept there when it was
    taken with these settings."""
    fingerprint = trial_fingerprint(scenario, trial)
    found = read_checkpoint(run_dir, trial.trial_id, fingerprint)  # damaged: set aside
    resume = None
    if found is not None:
        resume = decode(found[1], str(checkpoint_path(run_dir, trial.trial_id)))
        logger.warning(
            "trial %s resumes after round %d from %s",
            trial.trial_id, resume.round, checkpoint_path(run_dir, trial.trial_id),
        )  # fmt: skip

    def save(checkpoint: Checkpoint) -> None:
        path = write_checkpoint(run_dir, trial.trial_id, encode(checkpoint))
        logger.info("checkpoint of %s after round %d: %s", trial.trial_id, checkpoint.round, path)

    return Checkpointing(1, fingerprint, save, resume, node_states=False)


def make_server_app(
    on_round: RoundCallback | None = None, sweep_trial: SweepTrial | None = None
) -> ServerApp:
    """A ServerApp; a sweep passes ``on_round`` to follow progress, and ``sweep_trial`` to
    run a trial from memory. Without ``sweep_trial`` (``flwr run``, deployment) the run
    config names the scenario and the run directory, and the trial's files are written
    there."""
    app = ServerApp()

    @app.main()
    @without_false_lines
    def main(grid: Grid, context: Context) -> None:
        if sweep_trial is not None:
            s = sweep_trial
            outcome = execute_trial(
                grid, s.scenario, s.trial, s.cohort, s.device, s.threads, on_round,
                s.checkpointing,
            )  # fmt: skip
            s.finished(outcome)
            return
        scenario, trial, run_dir = trial_from_run_config(context.run_config)
        # one process at a time in a run directory (fedll run and report hold it too)
        with hold_run_dir(run_dir, f"the ServerApp of trial {trial.trial_id}"):
            run_configured(grid, context.run_config, scenario, trial, run_dir, on_round)

    return app


def run_configured(
    grid: Grid,
    run_config: Mapping[str, object],
    scenario: Scenario,
    trial: Trial,
    run_dir: Path,
    on_round: RoundCallback | None = None,
) -> None:
    """Under ``flwr run``: run ``trial`` and write its files into ``run_dir``, then (with the
    run config's ``collect``) the run's results and report."""
    cohort = CohortArrays.load(cohort_for(run_dir, scenario))
    if not (resolved := run_dir / "scenario.yaml").exists():
        resolved.write_text(dump_scenario(scenario))
    threads = int(str(run_config.get("threads", 1)))
    device = resolve_device(str(run_config.get("device", scenario.execution.device)))
    start = time.perf_counter()
    checkpointing = round_checkpoints(run_dir, scenario, trial)
    try:
        outcome = execute_trial(
            grid, scenario, trial, cohort, device, threads, on_round, checkpointing
        )
    except CheckpointError as refused:  # it does not fit the trial: set aside, run from round 0
        source = str(checkpoint_path(run_dir, trial.trial_id))
        set_aside_checkpoint(run_dir, trial.trial_id, str(refused).partition(": ")[2] or source)
        outcome = execute_trial(
            grid, scenario, trial, cohort, device, threads, on_round,
            round_checkpoints(run_dir, scenario, trial),
        )  # fmt: skip
    wall_s = time.perf_counter() - start
    ran = arithmetic(device, scenario.training.precision, scenario.evaluation.precision)
    path = keep_trial(run_dir, scenario, trial, outcome, wall_s, ran)
    logger.info("trial %s written to %s", trial.trial_id, path)
    if run_config.get("collect", True):
        fingerprints = {t.trial_id: trial_fingerprint(scenario, t) for t in expand_trials(scenario)}
        collect(run_dir, fingerprints)
        build_report(run_dir)


app = make_server_app()
