"""Run every trial of a scenario: on Ray, on this machine or a Ray cluster, or in this process.

Each trial is a federation run in-process (the ServerApp and the ClientApp through an
:class:`~fedll.federation.inprocess.InProcessGrid`) inside a Ray actor of a warm pool
(:class:`TrialRunner`: it imports a trial's stack once and runs trial after trial); Flower's
Simulation Engine is not used here (it hung inside Ray and costs 10-25 s to start). Trials
start longest first (:mod:`fedll.run.workload`), so that the last ones, running while workers
fall idle, are short. A trial whose files verify (:mod:`fedll.run.store`) is skipped, so
rerunning an interrupted sweep loses nothing; the files of a trial that does not verify are
set aside and it runs again.

Trials need no shared disk: the driver prepares the cohort once and loads its slices into a
:class:`~fedll.data.arrays.CohortArrays`, put once into Ray's object store and shared by every
task; a trial gets the resolved scenario and its index (:class:`~fedll.run.trial_task.TrialTask`),
and returns its outcome (:class:`~fedll.run.trial_task.TrialDone`: rows, final model). Checkpoints
(``execution.checkpoint_every``) come back through the progress actor. The driver alone writes
the run directory; ``--local`` runs the same tasks in this process. A rerun resumes an
unfinished trial from its latest checkpoint; one that does not fit the trial
(:func:`fedll.run.checkpoint.verify`, as the trial resumes) is set aside and the trial runs
again from round 0.

Ray is sized explicitly: ``num_cpus`` of the machine (or the cluster's), an object store
of ``object_store_mb``, no dashboard, and ``cpus_per_trial`` CPUs (``num_gpus``: see
:func:`trial_gpus`) per actor with torch using as many threads.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from fedll.config import Scenario, Trial, expand_trials, load_scenario
from fedll.config.grid import fingerprints, trial_fingerprint
from fedll.data.arrays import CohortArrays
from fedll.data.prepare import cohort_for
from fedll.errors import ConfigError
from fedll.results.rows import TrialOutcome
from fedll.run.checkpoint import CheckpointError, Checkpointing
from fedll.run.device import resolve_device
from fedll.run.planning import trial_stream
from fedll.run.store import (
    finished,
    read_checkpoint,
    set_aside_checkpoint,
    write_checkpoint,
)
from fedll.run.trial_task import SweepTrial, TrialDone, TrialTask, keep_trial
from fedll.run.workload import longest_first

logger = logging.getLogger(__name__)

RESOLVED_SCENARIO = "scenario.yaml"
# fedll's Flower app (pyproject.toml, [tool.flwr.app.components]) by its factories, which
# take the trial's in-memory inputs and the sweep's callbacks: the one place fedll's core
# reaches the apps (by reference, so that it never imports them; tests/test_layering.py)
CLIENT_APP_FACTORY = "sites.client_app:make_client_app"
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
    """The scenario's trials whose files do not verify (:mod:`fedll.run.store`); the files of any
    of them that has some are set aside, so that it runs again."""
    done = finished(run_dir, fingerprints(scenario))
    return [t for t in expand_trials(scenario) if t.trial_id not in done]


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
    from fedll.run.device import arithmetic, resolve_device

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


class ProgressLog:
    """Round events and checkpoints that trials push and the driver drains (a Ray actor's
    body with Ray); with ``forward``, each is handed on as it comes instead (a trial in this
    process). Only a trial's latest checkpoint is held."""

    def __init__(
        self,
        forward: Callable[[Progress], None] | None = None,
        keep: Callable[[str, int, bytes], None] | None = None,
    ) -> None:
        self.events: list[Progress] = []
        self.checkpoints: dict[str, tuple[int, bytes]] = {}
        self.forward, self.keep = forward, keep

    def push(self, trial_id: str, rnd: int, rounds: int) -> None:
        event = Progress(trial_id, rnd, rounds)
        if self.forward is not None:
            self.forward(event)
        else:
            self.events.append(event)

    def checkpoint(self, trial_id: str, rnd: int, data: bytes) -> None:
        if self.keep is not None:
            self.keep(trial_id, rnd, data)
        else:
            self.checkpoints[trial_id] = (rnd, data)

    def drain(self) -> tuple[list[Progress], dict[str, tuple[int, bytes]]]:
        events, self.events = self.events, []
        checkpoints, self.checkpoints = self.checkpoints, {}
        return events, checkpoints


def _ray_task(task: TrialTask, cohort: CohortArrays, trial_id: str, progress: Any) -> TrialDone:
    def report(rnd: int, rounds: int) -> None:
        progress.push.remote(trial_id, rnd, rounds)

    def checkpoint(rnd: int, data: bytes) -> None:
        # waited for, so that the driver can have it before the next round ends
        import ray

        ray.get(progress.checkpoint.remote(trial_id, rnd, data))

    return execute_task(task, cohort, report, checkpoint)


def warm_up() -> None:
    """Import what a trial runs (torch, Flower, fedll's apps, MONAI's metrics): seconds that
    a fresh worker otherwise spends inside its first trial."""
    import importlib

    from fedll.federation.inprocess import load_reference

    load_reference(CLIENT_APP_FACTORY)
    load_reference(SERVER_APP_FACTORY)
    importlib.import_module("monai.metrics")


class TrialRunner:
    """A Ray actor's body: a worker that imports a trial's stack once, when it starts, and
    then runs trial after trial (:func:`execute_task`)."""

    def __init__(self) -> None:
        warm_up()

    def run(self, task: TrialTask, cohort: CohortArrays, trial_id: str, progress: Any) -> TrialDone:
        return _ray_task(task, cohort, trial_id, progress)


def pool_size(limit: int, cpus_per_trial: int, gpus: float, resources: Mapping[str, float]) -> int:
    """How many trial workers to start: ``limit``, at most as many as the cluster's CPUs (and
    GPUs, when trials take some) hold at once, at least one."""
    fit = int(resources.get("CPU", 0) // max(cpus_per_trial, 1))
    if gpus > 0:
        fit = min(fit, int(resources.get("GPU", 0) // gpus))
    return max(1, min(limit, fit))


class Backend(Protocol):
    """Where trials run: :class:`LocalBackend` (this process) or :class:`RayBackend`."""

    limit: int  # trials at a time

    def submit(self, task: TrialTask, trial_id: str) -> Any:
        """Start the trial of ``task``; returns its handle."""

    def wait(self, handles: Sequence[Any]) -> list[Any]:
        """The handles of trials that have finished (blocking a little at most)."""

    def result(self, handle: Any) -> TrialDone | str:
        """The trial's outcome, or what went wrong (one line)."""

    def drain(self) -> tuple[list[Progress], dict[str, tuple[int, bytes]]]:
        """Round events and latest checkpoints pushed since the last drain."""


class LocalBackend:
    """Trials one after another in this process: ``wait`` runs the one submitted; its round
    events reach ``on_progress``, its checkpoints ``keep``, as they happen."""

    limit = 1

    def __init__(
        self,
        cohort: CohortArrays,
        on_progress: Callable[[Progress], None] | None = None,
        keep: Callable[[str, int, bytes], None] | None = None,
    ) -> None:
        self.cohort = cohort
        self.progress = ProgressLog(forward=on_progress or (lambda event: None), keep=keep)
        self.results: dict[str, TrialDone | str] = {}
        self.submitted: dict[str, TrialTask] = {}

    def submit(self, task: TrialTask, trial_id: str) -> str:
        self.submitted[trial_id] = task
        return trial_id

    def wait(self, handles: Sequence[str]) -> list[str]:
        trial_id = handles[0]

        def report(rnd: int, rounds: int) -> None:
            self.progress.push(trial_id, rnd, rounds)

        def checkpoint(rnd: int, data: bytes) -> None:
            self.progress.checkpoint(trial_id, rnd, data)

        task = self.submitted.pop(trial_id)
        try:
            self.results[trial_id] = execute_task(task, self.cohort, report, checkpoint)
        except Exception as error:  # one bad trial must not lose the others
            self.results[trial_id] = f"{type(error).__name__}: {error}"
        return [trial_id]

    def result(self, handle: str) -> TrialDone | str:
        return self.results.pop(handle)

    def drain(self) -> tuple[list[Progress], dict[str, tuple[int, bytes]]]:
        return self.progress.drain()


class RayBackend:
    """Trials on a pool of warm Ray actors (:class:`TrialRunner`, ``cpus_per_trial`` CPUs and
    ``gpus`` GPUs each, as many as run at once): each imports a trial's stack once, as soon as
    the pool is made, and runs many trials. The cohort's slices are put into the object store
    once (:meth:`share`); progress and checkpoints go through a Ray actor. An actor lost with
    its trial (its process killed) is replaced."""

    def __init__(self, options: SweepOptions, limit: int, gpus: float):
        import ray

        self.ray, self.options = ray, options
        self.limit = pool_size(limit, options.cpus_per_trial, gpus, ray.cluster_resources())
        self.progress = ray.remote(num_cpus=0)(ProgressLog).remote()
        self.runner = ray.remote(
            num_cpus=options.cpus_per_trial, num_gpus=gpus, max_restarts=0, max_task_retries=0
        )(TrialRunner)
        self.idle = [self.runner.remote() for _ in range(self.limit)]
        self.busy: dict[Any, Any] = {}
        self.cohort: Any = None

    def share(self, cohort: CohortArrays) -> None:
        """Put the cohort's slices into the object store, once, for every trial."""
        logger.info("the cohort's slices: %.1f MiB into the object store", cohort.nbytes() / 2**20)
        self.cohort = self.ray.put(cohort)

    def submit(self, task: TrialTask, trial_id: str) -> Any:
        actor = self.idle.pop()
        handle = actor.run.remote(task, self.cohort, trial_id, self.progress)
        self.busy[handle] = actor
        return handle

    def wait(self, handles: Sequence[Any]) -> list[Any]:
        ready, _ = self.ray.wait(list(handles), num_returns=1, timeout=0.5)
        return ready

    def result(self, handle: Any) -> TrialDone | str:
        actor = self.busy.pop(handle)
        try:
            done: TrialDone | str = self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as error:
            cause = error.cause if error.cause is not None else error
            done = f"{type(cause).__name__}: {cause}"
        except self.ray.exceptions.RayError as error:  # the actor, its worker or node lost
            self.ray.kill(actor)
            actor = self.runner.remote()
            done = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        self.idle.append(actor)
        return done

    def drain(self) -> tuple[list[Progress], dict[str, tuple[int, bytes]]]:
        return self.ray.get(self.progress.drain.remote())


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
        with _ray(options):
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


def trial_gpus(scenario: Scenario, options: SweepOptions) -> float:
    """GPUs per Ray trial: ``execution.gpus_per_trial``, else 1 when the trials' device is
    CUDA (``auto``: when the cluster has GPUs), else 0. ConfigError when the device asks for
    CUDA and the cluster has no GPU (call with Ray initialised)."""
    import ray

    execution = scenario.execution
    cluster = float(ray.cluster_resources().get("GPU", 0))
    if execution.device == "cpu":
        return 0.0
    if execution.device == "auto":
        return (execution.gpus_per_trial or 1.0) if cluster > 0 else 0.0
    if cluster <= 0:
        where = options.address or "this machine"
        raise ConfigError(
            f"execution.device: {execution.device} asked, but the Ray cluster at {where} "
            "has no GPU; use auto or cpu"
        )
    return execution.gpus_per_trial or 1.0


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
