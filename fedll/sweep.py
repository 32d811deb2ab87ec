"""Run every trial of a scenario: Ray tasks on this machine or a Ray cluster.

Each trial is a federation run in-process (the ServerApp and the ClientApp through an
:class:`~fedll.inprocess.InProcessGrid`) inside one Ray task; Flower's Simulation Engine
is not used here (it hung inside Ray and costs 10-25 s to start). A trial whose files verify
(:mod:`fedll.store`) is skipped, so rerunning an interrupted sweep loses nothing; the files of
a trial that does not verify are set aside and it runs again.

Ray is sized explicitly: ``num_cpus`` of the machine (or the cluster's), an object store
of ``object_store_mb``, no dashboard, and ``cpus_per_trial`` CPUs per task with torch
using as many threads.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from fedll.config import Scenario, Trial, expand_trials, load_scenario
from fedll.config.grid import fingerprints
from fedll.errors import ConfigError
from fedll.store import finished, trial_path

logger = logging.getLogger(__name__)

RESOLVED_SCENARIO = "scenario.yaml"
# fedll's Flower app (pyproject.toml, [tool.flwr.app.components]); the ServerApp by its
# factory, which takes the sweep's progress callback
CLIENT_APP = "sites.client_app:app"
SERVER_APP_FACTORY = "strategies.server_app:make_server_app"


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


def pending(run_dir: Path, scenario: Scenario) -> list[Trial]:
    """The scenario's trials whose files do not verify (:mod:`fedll.store`); the files of any
    of them that has some are set aside, so that it runs again."""
    done = finished(run_dir, fingerprints(scenario))
    return [t for t in expand_trials(scenario) if t.trial_id not in done]


def run_trial(
    run_dir: Path,
    trial_index: int,
    threads: int,
    on_round: Callable[[int, int], None] | None = None,
) -> Path:
    """Run one trial of ``RUN_DIR/scenario.yaml`` in this process; returns its results file.

    The ServerApp and the ClientApp are fedll's Flower app, loaded by the references the app
    declares (``[tool.flwr.app.components]``), so the sweep runs exactly what ``flwr run``
    runs, through an :class:`~fedll.inprocess.InProcessGrid`.
    """
    import torch

    from fedll.inprocess import (
        InProcessGrid,
        load_reference,
        run_server_app,
        simulation_node_configs,
    )

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
        load_reference(CLIENT_APP),
        simulation_node_configs(len(scenario.sites)),
        run_config,
        seed=trial.seed,
    )
    run_server_app(load_reference(SERVER_APP_FACTORY)(on_round), grid, run_config)
    return trial_path(run_dir, trial)


class ProgressLog:
    """Round events that trials push and the driver drains (a Ray actor's body with Ray);
    with ``forward``, each event is handed on as it comes instead (a trial in this process)."""

    def __init__(self, forward: Callable[[Progress], None] | None = None) -> None:
        self.events: list[Progress] = []
        self.forward = forward

    def push(self, trial_id: str, rnd: int, rounds: int) -> None:
        event = Progress(trial_id, rnd, rounds)
        if self.forward is not None:
            self.forward(event)
        else:
            self.events.append(event)

    def drain(self) -> list[Progress]:
        events, self.events = self.events, []
        return events


def _ray_task(run_dir: str, trial_index: int, trial_id: str, threads: int, progress: Any) -> str:
    def report(rnd: int, rounds: int) -> None:
        progress.push.remote(trial_id, rnd, rounds)

    return str(run_trial(Path(run_dir), trial_index, threads, report))


class Backend(Protocol):
    """Where trials run: :class:`LocalBackend` (this process) or :class:`RayBackend`."""

    limit: int  # trials at a time

    def submit(self, trial: Trial, index: int) -> Any:
        """Start ``trial`` (number ``index`` of the grid); returns its handle."""

    def wait(self, handles: Sequence[Any]) -> list[Any]:
        """The handles of trials that have finished (blocking a little at most)."""

    def error(self, handle: Any) -> str | None:
        """None if the trial of ``handle`` succeeded, else what went wrong (one line)."""

    def drain(self) -> list[Progress]:
        """Round events pushed since the last drain."""


class LocalBackend:
    """Trials one after another in this process: ``wait`` runs the one submitted, and its
    round events reach ``on_progress`` as they happen."""

    limit = 1

    def __init__(
        self, run_dir: Path, threads: int, on_progress: Callable[[Progress], None] | None = None
    ) -> None:
        self.run_dir, self.threads = run_dir, threads
        self.progress = ProgressLog(forward=on_progress or (lambda event: None))
        self.errors: dict[str, str | None] = {}
        self.submitted: dict[str, int] = {}

    def submit(self, trial: Trial, index: int) -> str:
        self.submitted[trial.trial_id] = index
        return trial.trial_id

    def wait(self, handles: Sequence[str]) -> list[str]:
        trial_id = handles[0]

        def report(rnd: int, rounds: int) -> None:
            self.progress.push(trial_id, rnd, rounds)

        try:
            run_trial(self.run_dir, self.submitted.pop(trial_id), self.threads, report)
        except Exception as error:  # one bad trial must not lose the others
            self.errors[trial_id] = f"{type(error).__name__}: {error}"
        else:
            self.errors[trial_id] = None
        return [trial_id]

    def error(self, handle: str) -> str | None:
        return self.errors.pop(handle)

    def drain(self) -> list[Progress]:
        return self.progress.drain()


class RayBackend:
    """Trials as Ray tasks of ``cpus_per_trial`` CPUs; progress through a Ray actor."""

    def __init__(self, run_dir: Path, options: SweepOptions, limit: int) -> None:
        import ray

        self.ray, self.run_dir, self.options, self.limit = ray, run_dir, options, limit
        self.progress = ray.remote(num_cpus=0)(ProgressLog).remote()
        self.task = ray.remote(num_cpus=options.cpus_per_trial, max_retries=0)(_ray_task)

    def submit(self, trial: Trial, index: int) -> Any:
        return self.task.remote(
            str(self.run_dir), index, trial.trial_id, self.options.cpus_per_trial, self.progress
        )

    def wait(self, handles: Sequence[Any]) -> list[Any]:
        ready, _ = self.ray.wait(list(handles), num_returns=1, timeout=0.5)
        return ready

    def error(self, handle: Any) -> str | None:
        try:
            self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as error:
            cause = error.cause if error.cause is not None else error
            return f"{type(cause).__name__}: {cause}"
        return None

    def drain(self) -> list[Progress]:
        return self.ray.get(self.progress.drain.remote())


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
    todo = pending(run_dir, scenario)
    summary = SweepSummary(skipped=[t.trial_id for t in trials if t not in todo])
    if not todo:
        return summary
    if options.backend == "local":
        local = LocalBackend(run_dir, options.cpus_per_trial, on_progress)
        schedule(local, trials, todo, summary, on_progress, on_trial_done)
        return summary
    with _ray(options):
        remote = RayBackend(run_dir, options, options.max_concurrent or len(todo))
        schedule(remote, trials, todo, summary, on_progress, on_trial_done)
    return summary


def schedule(
    backend: Backend,
    trials: Sequence[Trial],
    todo: Sequence[Trial],
    summary: SweepSummary,
    on_progress: Callable[[Progress], None] | None = None,
    on_trial_done: Callable[[str, str | None], None] | None = None,
) -> None:
    """Keep ``backend.limit`` trials of ``todo`` running until all have finished; report
    every round event and every finished trial (into ``summary`` and the callbacks)."""
    index = {t.trial_id: i for i, t in enumerate(trials)}
    queue = list(todo)
    running: dict[Any, str] = {}

    def drain() -> None:
        for event in backend.drain():
            if on_progress is not None:
                on_progress(event)

    while queue or running:
        while queue and len(running) < backend.limit:
            trial = queue.pop(0)
            running[backend.submit(trial, index[trial.trial_id])] = trial.trial_id
        ready = backend.wait(list(running))
        drain()
        for handle in ready:
            trial_id = running.pop(handle)
            error = backend.error(handle)
            if error is None:
                summary.done.append(trial_id)
            else:
                summary.failed[trial_id] = error
                logger.error("trial %s failed: %s", trial_id, error)
            if on_trial_done is not None:
                on_trial_done(trial_id, error)
    drain()


def check_address(address: str, timeout: float = 10.0) -> None:
    """ConfigError within ``timeout`` seconds when nothing listens at a Ray ``--address``
    (``HOST:PORT`` or ``ray://HOST:PORT``; ``auto`` is left to Ray), instead of Ray's minutes
    of retries."""
    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--address {address}: expected HOST:PORT (or ray://HOST:PORT, auto)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({reason})") from None


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


@contextmanager
def _ray(options: SweepOptions) -> Iterator[None]:
    """Ray for the sweep: the running one, or one started here and shut down after."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        with warnings.catch_warnings():
            # a tip about GPU env vars; fedll asks Ray for no GPUs
            warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
            ray.init(**ray_init_kwargs(options))
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()
