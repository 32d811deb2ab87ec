"""Run every trial of a scenario: on Ray, on this machine or a Ray cluster, or in this process.

Each trial is a federation run in-process (:mod:`fedll.run.execute`: the ServerApp and the
ClientApp through an :class:`~fedll.federation.inprocess.InProcessGrid`) inside a Ray actor of
a warm pool (:class:`~fedll.run.backends.TrialRunner`: it imports a trial's stack once and runs
trial after trial); Flower's Simulation Engine is not used here (it hung inside Ray and costs
10-25 s to start). Trials start longest first (:mod:`fedll.run.workload`), so that the last
ones, running while workers fall idle, are short. A trial whose files verify
(:mod:`fedll.run.store`) is skipped, so rerunning an interrupted sweep loses nothing; the files
of a trial that does not verify are set aside and it runs again.

Trials need no shared disk: the driver prepares the cohort once and loads its slices into a
:class:`~fedll.data.arrays.CohortArrays`, put once into Ray's object store and shared by every
task; a trial gets the resolved scenario and its index (:class:`~fedll.run.trial_task.TrialTask`),
and returns its outcome (:class:`~fedll.run.trial_task.TrialDone`: rows, final model). Checkpoints
(``execution.checkpoint_every``) come back through the progress actor. The driver alone writes
the run directory; ``--local`` runs the same tasks in this process. A rerun resumes an
unfinished trial from its latest checkpoint; one that does not fit the trial
(:func:`fedll.run.checkpoint.verify`, as the trial resumes) is set aside and the trial runs
again from round 0.

Where trials run is a backend (:mod:`fedll.run.backends`); Ray is sized and started by
:mod:`fedll.run.ray_cluster`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

from fedll.config import Scenario, Trial, expand_trials, load_scenario
from fedll.config.grid import fingerprints
from fedll.data.arrays import CohortArrays
from fedll.data.prepare import cohort_for
from fedll.run.backends import Backend, LocalBackend, Progress, RayBackend
from fedll.run.checkpoint import CheckpointError
from fedll.run.device import resolve_device
from fedll.run.planning import trial_stream
from fedll.run.ray_cluster import ray_session, trial_gpus
from fedll.run.run_dir import RESOLVED_SCENARIO
from fedll.run.store import (
    finished,
    read_checkpoint,
    set_aside_checkpoint,
    write_checkpoint,
)
from fedll.run.trial_task import TrialDone, TrialTask, keep_trial
from fedll.run.workload import longest_first

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepOptions:
    backend: Literal["ray", "local"] = "ray"
    address: str | None = None
    cpus_per_trial: int = 1
    max_concurrent: int | None = None
    object_store_mb: int = 256

    @classmethod
    def from_scenario(cls, scenario: Scenario, **overrides: Any) -> SweepOptions:
        e = scenario.execution
        base = {
            "address": e.address,
            "cpus_per_trial": e.cpus_per_trial,
            "max_concurrent": e.max_concurrent,
            "object_store_mb": e.object_store_mb,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


@dataclass
class SweepSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def pending(run_dir: Path, scenario: Scenario) -> list[Trial]:
    """The scenario's trials whose files do not verify (:mod:`fedll.run.store`); the files of any
    of them that has some are set aside, so that it runs again."""
    done = finished(run_dir, fingerprints(scenario))
    return [t for t in expand_trials(scenario) if t.trial_id not in done]


def run_sweep(
    run_dir: Path,
    options: SweepOptions,
    on_progress: Callable[[Progress], None] | None = None,
    on_trial_done: Callable[[str, str | None], None] | None = None,
    on_resume: Callable[[str, int], None] | None = None,
    prepare: Callable[[], object] | None = None,
    on_kept: Callable[[list[str]], None] | None = None,
) -> SweepSummary:
    """Run the pending trials of ``RUN_DIR/scenario.yaml``; see the module docstring.

    ``prepare`` (the CLI's cohort preparation: synthesis, slice cache) runs first; with Ray,
    in a thread while Ray starts and the pool's workers import, and its error is raised.
    ``on_kept`` hears, before any trial runs, which finished trials are kept."""
    run_dir = Path(run_dir)
    scenario = load_scenario(run_dir / RESOLVED_SCENARIO)
    trials = expand_trials(scenario)
    todo = pending(run_dir, scenario)
    summary = SweepSummary(skipped=[t.trial_id for t in trials if t not in todo])
    if on_kept is not None:
        on_kept(list(summary.skipped))
    if prepare is not None and (not todo or options.backend == "local"):
        prepare()
    if not todo:
        return summary
    index = {t.trial_id: i for i, t in enumerate(trials)}
    prints = fingerprints(scenario)
    device = scenario.execution.device
    if options.backend == "local":
        resolve_device(device)  # a CUDA device that is not there: one line, before any trial
        cohort = CohortArrays.load(cohort_for(run_dir, scenario))
        todo = longest_first(scenario, todo, cohort)
        tasks = _tasks(run_dir, scenario, todo, index, prints, options, device, on_resume)
        local = LocalBackend(cohort, on_progress, partial(_keep_checkpoint, run_dir))
        schedule(local, run_dir, scenario, tasks, summary, on_progress, on_trial_done)
        return summary
    with ThreadPoolExecutor(max_workers=1) as thread:
        # the cohort is prepared while Ray starts (its workers are spawned, not forked)
        preparing = thread.submit(prepare) if prepare is not None else None
        with ray_session(options):
            gpus = trial_gpus(scenario, options)
            # the pool's actors import a trial's stack while this process loads the slices
            remote = RayBackend(options, options.max_concurrent or len(todo), gpus)
            if preparing is not None:
                preparing.result()
            cohort = CohortArrays.load(cohort_for(run_dir, scenario))
            remote.share(cohort)
            todo = longest_first(scenario, todo, cohort)  # the tail, when few are left, short
            tasks = _tasks(run_dir, scenario, todo, index, prints, options, device, on_resume)
            schedule(remote, run_dir, scenario, tasks, summary, on_progress, on_trial_done)
    return summary


def _tasks(
    run_dir: Path,
    scenario: Scenario,
    todo: Sequence[Trial],
    index: Mapping[str, int],
    prints: Mapping[str, str],
    options: SweepOptions,
    device: str,
    on_resume: Callable[[str, int], None] | None,
) -> list[tuple[Trial, TrialTask]]:
    """Each pending trial's task, with its latest checkpoint when it has a usable one."""
    tasks = []
    for trial in todo:
        rounds = len(trial_stream(scenario, trial))  # in process, every site joins
        found = read_checkpoint(run_dir, trial.trial_id, prints[trial.trial_id], rounds)
        resume = None
        if found is not None:
            rnd, resume = found
            logger.info("resumed %s from round %d", trial.trial_id, rnd)
            if on_resume is not None:
                on_resume(trial.trial_id, rnd)
        task = TrialTask(scenario, index[trial.trial_id], options.cpus_per_trial, device, resume)
        tasks.append((trial, task))
    return tasks


def _keep_checkpoint(run_dir: Path, trial_id: str, rnd: int, data: bytes) -> None:
    path = write_checkpoint(run_dir, trial_id, data)
    logger.debug("checkpoint of %s after round %d: %s", trial_id, rnd, path)


def schedule(
    backend: Backend,
    run_dir: Path,
    scenario: Scenario,
    tasks: Sequence[tuple[Trial, TrialTask]],
    summary: SweepSummary,
    on_progress: Callable[[Progress], None] | None = None,
    on_trial_done: Callable[[str, str | None], None] | None = None,
) -> None:
    """Keep ``backend.limit`` of ``tasks`` running until all have finished; write each
    finished trial's files and each checkpoint (the driver alone writes the run directory),
    and report every round event and finished trial (into ``summary`` and the callbacks). A
    trial whose checkpoint turns out not to fit it (CheckpointError as it resumes) has the
    checkpoint set aside and runs again from round 0."""
    queue = list(tasks)
    running: dict[Any, tuple[Trial, TrialTask]] = {}
    refused = f"{CheckpointError.__name__}: "

    def drain() -> None:
        events, checkpoints = backend.drain()
        for event in events:
            if on_progress is not None:
                on_progress(event)
        for trial_id, (rnd, data) in checkpoints.items():
            _keep_checkpoint(run_dir, trial_id, rnd, data)

    while queue or running:
        while queue and len(running) < backend.limit:
            trial, task = queue.pop(0)
            running[backend.submit(task, trial.trial_id)] = (trial, task)
        ready = backend.wait(list(running))
        drain()
        for handle in ready:
            trial, task = running.pop(handle)
            done = backend.result(handle)
            error = done if isinstance(done, str) else None
            if error is not None and task.resume is not None and error.startswith(refused):
                problem = error.removeprefix(refused).partition(": ")[2]  # less its source
                set_aside_checkpoint(run_dir, trial.trial_id, problem)
                queue.insert(0, (trial, replace(task, resume=None)))
                continue
            if isinstance(done, TrialDone):
                try:
                    keep_trial(run_dir, scenario, trial, done.outcome, done.wall_s, done.arithmetic)
                except OSError as failure:
                    error = f"{type(failure).__name__}: {failure}"
            if error is None:
                summary.done.append(trial.trial_id)
            else:
                summary.failed[trial.trial_id] = error
                logger.error("trial %s failed: %s", trial.trial_id, error)
            if on_trial_done is not None:
                on_trial_done(trial.trial_id, error)
    drain()
