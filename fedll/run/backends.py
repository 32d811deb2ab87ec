"""Where a sweep's trials run: in this process, or on a pool of warm Ray actors.

A backend (:class:`Backend`) starts trials, says which have finished, and hands on their
outcomes and the round events and checkpoints they pushed (:class:`ProgressLog`).
:class:`LocalBackend` runs them one after another in this process; :class:`RayBackend` on
warm Ray actors (:class:`TrialRunner`: each imports a trial's stack once and runs trial after
trial), as many as the cluster holds at once (:func:`pool_size`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fedll.data.arrays import CohortArrays
from fedll.run.execute import execute_task, warm_up
from fedll.run.trial_task import TrialDone, TrialTask

if TYPE_CHECKING:
    from fedll.run.sweep import SweepOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """A trial reached ``round`` of ``rounds`` (``round == rounds`` means evaluated last)."""

    trial_id: str
    round: int
    rounds: int


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
