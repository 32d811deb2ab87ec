"""Run every trial of a scenario: Ray tasks on this machine or a Ray cluster.

Each trial is a federation run in-process (the ServerApp and the ClientApp through an
:class:`~fedll.inprocess.InProcessGrid`) inside one Ray task; Flower's Simulation Engine
is not used here (it hung inside Ray and costs 10-25 s to start). A trial whose results
file exists is skipped, so rerunning an interrupted sweep loses nothing.

Ray is sized explicitly: ``num_cpus`` of the machine (or the cluster's), an object store
of ``object_store_mb``, no dashboard, and ``cpus_per_trial`` CPUs per task with torch
using as many threads.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedll.config import Scenario, Trial, expand_trials, load_scenario
from fedll.results import trial_path

logger = logging.getLogger(__name__)

RESOLVED_SCENARIO = "scenario.yaml"


@dataclass(frozen=True)
class Progress:
    """A trial reached ``round`` of ``rounds`` (``round == rounds`` means evaluated last)."""

    trial_id: str
    round: int
    rounds: int


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


def pending(run_dir: Path, trials: Sequence[Trial]) -> list[Trial]:
    """Trials without a results file yet."""
    return [t for t in trials if not trial_path(run_dir, t).exists()]


def run_trial(
    run_dir: Path,
    trial_index: int,
    threads: int,
    on_round: Callable[[int, int], None] | None = None,
) -> Path:
    """Run one trial of ``RUN_DIR/scenario.yaml`` in this process; returns its results file."""
    import torch

    from fedll.inprocess import InProcessGrid, run_server_app, simulation_node_configs
    from sites.client_app import app as client_app
    from strategies.server_app import make_server_app

    torch.set_num_threads(max(1, threads))
    run_dir = Path(run_dir)
    scenario = load_scenario(run_dir / RESOLVED_SCENARIO)
    trial = expand_trials(scenario)[trial_index]
    run_config = {
        "scenario": str(run_dir / RESOLVED_SCENARIO),
        "trial": trial_index,
        "run-dir": str(run_dir),
        "threads": threads,
        "collect": False,
    }
    grid = InProcessGrid(
        client_app, simulation_node_configs(len(scenario.sites)), run_config, seed=trial.seed
    )
    run_server_app(make_server_app(on_round), grid, run_config)
    return trial_path(run_dir, trial)


def _ray_task(run_dir: str, trial_index: int, trial_id: str, threads: int, progress: Any) -> str:
    def report(rnd: int, rounds: int) -> None:
        progress.push.remote(trial_id, rnd, rounds)

    return str(run_trial(Path(run_dir), trial_index, threads, report))


class _ProgressLog:
    """A Ray actor's body: trials push round events, the driver drains them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def push(self, trial_id: str, rnd: int, rounds: int) -> None:
        self.events.append((trial_id, rnd, rounds))

    def drain(self) -> list[tuple[str, int, int]]:
        events, self.events = self.events, []
        return events


def run_sweep(
    run_dir: Path,
    options: SweepOptions,
    on_progress: Callable[[Progress], None] | None = None,
    on_trial_done: Callable[[str, str | None], None] | None = None,
) -> SweepSummary:
    """Run the pending trials of ``RUN_DIR/scenario.yaml``; see the module docstring."""
    run_dir = Path(run_dir)
    scenario = load_scenario(run_dir / RESOLVED_SCENARIO)
    trials = expand_trials(scenario)
    todo = pending(run_dir, trials)
    summary = SweepSummary(skipped=[t.trial_id for t in trials if t not in todo])
    if not todo:
        return summary
    index = {t.trial_id: i for i, t in enumerate(trials)}

    def finished(trial_id: str, error: str | None) -> None:
        if error is None:
            summary.done.append(trial_id)
        else:
            summary.failed[trial_id] = error
            logger.error("trial %s failed: %s", trial_id, error)
        if on_trial_done is not None:
            on_trial_done(trial_id, error)

    if options.backend == "local":
        for trial in todo:

            def report(rnd: int, rounds: int, tid: str = trial.trial_id) -> None:
                if on_progress is not None:
                    on_progress(Progress(tid, rnd, rounds))

            try:
                run_trial(run_dir, index[trial.trial_id], options.cpus_per_trial, report)
            except Exception as error:  # one bad trial must not lose the others
                finished(trial.trial_id, f"{type(error).__name__}: {error}")
            else:
                finished(trial.trial_id, None)
        return summary
    _run_with_ray(run_dir, todo, index, options, on_progress, finished)
    return summary


def ray_init_kwargs(options: SweepOptions) -> dict[str, Any]:
    """Explicit Ray sizing (its defaults take a third of the machine for the object store)."""
    if options.address:
        return {"address": options.address, "log_to_driver": False}
    return {
        "num_cpus": os.cpu_count() or 1,
        "object_store_memory": options.object_store_mb * 2**20,
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }


def _run_with_ray(
    run_dir: Path,
    todo: Sequence[Trial],
    index: dict[str, int],
    options: SweepOptions,
    on_progress: Callable[[Progress], None] | None,
    finished: Callable[[str, str | None], None],
) -> None:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        with warnings.catch_warnings():
            # a tip about GPU env vars; fedll asks Ray for no GPUs
            warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
            ray.init(**ray_init_kwargs(options))
    try:
        progress = ray.remote(num_cpus=0)(_ProgressLog).remote()
        task = ray.remote(num_cpus=options.cpus_per_trial, max_retries=0)(_ray_task)
        limit = options.max_concurrent or len(todo)
        queue = list(todo)
        running: dict[Any, str] = {}
        while queue or running:
            while queue and len(running) < limit:
                trial = queue.pop(0)
                ref = task.remote(
                    str(run_dir),
                    index[trial.trial_id],
                    trial.trial_id,
                    options.cpus_per_trial,
                    progress,
                )
                running[ref] = trial.trial_id
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            if on_progress is not None:
                for trial_id, rnd, rounds in ray.get(progress.drain.remote()):
                    on_progress(Progress(trial_id, rnd, rounds))
            for ref in ready:
                trial_id = running.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayTaskError as error:
                    cause = error.cause if error.cause is not None else error
                    finished(trial_id, f"{type(cause).__name__}: {cause}")
                else:
                    finished(trial_id, None)
        if on_progress is not None:
            for trial_id, rnd, rounds in ray.get(progress.drain.remote()):
                on_progress(Progress(trial_id, rnd, rounds))
    finally:
        if started_here:
            ray.shutdown()
