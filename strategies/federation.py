"""One trial as a federation: discover the sites, stream their arrivals over rounds,
aggregate, and evaluate the global model on each modality's test set after every round
(with Ditto, also each personalised model a site sent back that round, on the test set of
the site's modality).

Flower's ``Grid`` is the only transport this module needs, so the very same code runs
in-process (a sweep's Ray task), under ``flwr run`` on the Simulation Engine, and against
real SuperNodes in deployment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp import Grid

from fedll.config.grid import Trial, trial_fingerprint
from fedll.config.instruction import StateKey, TrainInstruction
from fedll.config.schema import Scenario
from fedll.data.slices import CaseSlices
from fedll.errors import ConfigError
from fedll.evaluation.evaluate import evaluate_personal, evaluate_round
from fedll.federation.inprocess import InProcessGrid
from fedll.federation.messages import PERSONAL
from fedll.federation.stream import Round
from fedll.models import ModelLayout, build_model
from fedll.results.rows import TrialOutcome, TrialResults
from fedll.run.checkpoint import Checkpoint, Checkpointing
from fedll.run.planning import plan_rounds, trial_stream
from strategies.handshake import SiteInfo, discover_sites, match_sites
from strategies.lifelong import Lifelong, declared
from strategies.privacy import privacy_spent
from strategies.registry import build_strategy
from strategies.rounds import TimedGrid

logger = logging.getLogger(__name__)

RoundCallback = Callable[[int, int], None]


def run_federation(
    grid: Grid,
    scenario: Scenario,
    trial: Trial,
    test: Mapping[str, Sequence[CaseSlices]],
    device: torch.device | None = None,
    threads: int = 1,
    on_round: RoundCallback | None = None,
    checkpointing: Checkpointing | None = None,
    timeout: float = 3600.0,
) -> TrialOutcome:
    """Run one trial over ``grid``, the global model evaluated on ``device`` on each
    modality's ``test`` cases after every round; returns its rows and final model.

    A round waits ``timeout`` seconds for its replies, or ``execution.round_timeout`` where
    the scenario sets one (:mod:`strategies.rounds`). Every instruction carries the key the
    sites' kept state is bound to (:mod:`fedll.federation.site_state`): the trial, its fingerprint
    and the federation, the id of the Flower run that started the trial (kept in checkpoints)."""
    device = device or torch.device("cpu")
    torch.set_num_threads(max(1, threads))
    infos = discover_sites(grid, expected=len(scenario.sites), timeout=min(timeout, 300.0))
    bound = match_sites(scenario, infos)
    left_out = [s.name for s in scenario.sites if s.name not in bound]
    stream = trial_stream(scenario, trial, left_out)
    state_key = _state_key(scenario, trial, grid, checkpointing)
    torch.manual_seed(trial.seed)
    spec = scenario.models[trial.model]
    model = build_model(spec.name, **spec.kwargs())
    initial = ArrayRecord(model.state_dict())
    model.to(device)
    strategy = _strategy(scenario, trial, stream, bound, ModelLayout.of(model), threads, state_key)
    results = TrialResults(trial=trial, stream=stream)
    snapshots = _snapshots(grid, checkpointing)
    done, initial = _resume(checkpointing, grid, len(stream), initial, strategy, results)
    strategy.round_offset = done
    round_timeout = strategy.round_timeout = scenario.execution.round_timeout
    # scored while the next round trains where the sites train elsewhere (_RoundEnds)
    overlap = not isinstance(grid, InProcessGrid) and snapshots is None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedll-evaluation") as pool:
        rounds = _RoundEnds(scenario, test, model, device, strategy, results, len(stream), done,
                            initial, on_round, pool if overlap else None)  # fmt: skip
        if snapshots is not None:
            rounds.keep = partial(_save, snapshots, grid, trial, strategy, results, state_key)
        timed = round_timeout is not None and not isinstance(grid, InProcessGrid)
        strategy.start(
            grid=TimedGrid(grid, strategy.site_of) if timed else grid,
            initial_arrays=initial,
            num_rounds=len(stream) - done,
            timeout=timeout if round_timeout is None else round_timeout,
            evaluate_fn=rounds.evaluate,
        )
        rounds.wait()
    results.failures.update(strategy.failures)
    results.rejected.update(strategy.rejected)
    if left_out:
        results.failures[0] = left_out  # round 0: the sites that never took part
    return TrialOutcome(results=results, state=dict(rounds.final))


def _state_key(
    scenario: Scenario, trial: Trial, grid: Grid, checkpointing: Checkpointing | None
) -> StateKey:
    """The key the sites' kept state is bound to: the federation is the Flower run that
    started the trial (a resumed trial's checkpoint keeps it)."""
    resume = checkpointing.resume if checkpointing is not None else None
    return StateKey(
        trial=trial.trial_id,
        fingerprint=trial_fingerprint(scenario, trial),
        federation=resume.federation if resume and resume.federation else str(grid.run.run_id),
    )


def _resume(
    checkpointing: Checkpointing | None,
    grid: Grid,
    rounds: int,
    initial: ArrayRecord,
    strategy: Lifelong,
    results: TrialResults,
) -> tuple[int, ArrayRecord]:
    """The rounds already run and the global model to go on from: 0 and ``initial``, or
    those of ``checkpointing.resume``, the trial put back to where it left it
    (:meth:`fedll.run.checkpoint.Checkpoint.restore`: CheckpointError where it does not fit)."""
    resume = checkpointing.resume if checkpointing is not None else None
    if checkpointing is None or resume is None:
        return 0, initial
    fresh = {k: v.numpy() for k, v in initial.items()}
    sites = _sites(grid, checkpointing)
    done = resume.restore(checkpointing.fingerprint, rounds, fresh, strategy, results, sites)
    logger.info("resumed %s from round %d", results.trial.trial_id, done)
    return done, ArrayRecord({k: Array(v) for k, v in resume.model.items()})


def _strategy(
    scenario: Scenario,
    trial: Trial,
    stream: Sequence[Round],
    bound: Mapping[str, SiteInfo],
    layout: ModelLayout,
    threads: int,
    state_key: StateKey,
) -> Lifelong:
    """The trial's strategy: its rule over the plan of who trains what in each round."""
    template = TrainInstruction(
        model=scenario.models[trial.model],
        training=scenario.training,
        slices=scenario.slices,
        arrival_start=0,
        arrival_stop=0,
        train_on=scenario.stream.train_on,
        seed=0,
        threads=threads,
        continual=trial.cl,
        state_key=state_key,
    )
    plan = plan_rounds(
        stream,
        template,
        {name: info.node_id for name, info in bound.items()},
        [s.name for s in scenario.sites],
        trial.seed,
        {f.site: f for f in scenario.faults},
    )
    assert trial.strategy is not None, "a stream trial has a strategy"
    return build_strategy(
        trial.strategy,
        plan=plan,
        layout=layout,
        site_of={i.node_id: n for n, i in bound.items()},
        training_lr=scenario.training.lr,
        seed=trial.seed,
    )


class _RoundEnds:
    """What follows each round: the global model scored on the test sets (and the
    personalised models the round's updates carried, where the rule sends them back: Ditto),
    in line or, with ``pool``, on its one thread while the next round trains; then ``keep``
    (a checkpoint) where one is set. ``done``: rounds run before (a resumed trial).

    Off the in-process grid the sites train in other processes (SuperNodes, the Simulation
    Engine's workers): the global model is scored while the next round trains, in order, on
    one thread. On it (a sweep's trial, one CPU) scoring stays in line, as do checkpoints."""

    def __init__(
        self,
        scenario: Scenario,
        test: Mapping[str, Sequence[CaseSlices]],
        model: torch.nn.Module,
        device: torch.device,
        strategy: Lifelong,
        results: TrialResults,
        rounds: int,
        done: int,
        initial: ArrayRecord,
        on_round: RoundCallback | None,
        pool: ThreadPoolExecutor | None,
    ) -> None:
        self.scenario, self.test, self.model = scenario, test, model
        self.strategy, self.results, self.rounds, self.done = strategy, results, rounds, done
        self.on_round, self.pool = on_round, pool
        self.final: dict[str, np.ndarray] = {k: v.numpy() for k, v in initial.items()}
        self.scoring: list[Future[None]] = []
        self.keep: Callable[[int, Mapping[str, np.ndarray]], None] | None = None
        self.modality_of = {s.name: s.modality for s in scenario.sites}
        # a scratch model for the personalised ones; its initialisation leaves the RNG as it
        # was (a resumed trial builds it later)
        self.personal_model = None
        if PERSONAL in declared(strategy.rule, "reply_arrays", ()):
            spec = scenario.models[results.trial.model]
            with torch.random.fork_rng(devices=[]):
                self.personal_model = build_model(spec.name, **spec.kwargs()).to(device)

    def evaluate(self, flower_round: int, arrays: ArrayRecord) -> None:
        """Flower's ``evaluate_fn``: round ``flower_round`` of this run ended with ``arrays``."""
        server_round = flower_round + self.done
        if flower_round == 0 and self.done:  # a resumed trial: its round was evaluated already
            return
        state = arrays.to_torch_state_dict()  # the arrays deserialised once, for both uses
        self.final.clear()
        self.final.update({k: v.numpy() for k, v in state.items()})
        personal = None
        if self.personal_model is not None and flower_round > 0:
            personal = _personal_models(self.strategy)
        job = partial(self._score, server_round, state, personal, privacy_spent(self.strategy.rule))
        if self.pool is None:
            job()
        else:
            for earlier in self.scoring:
                if earlier.done():
                    earlier.result()  # an evaluation's error ends the trial now
            self.scoring.append(self.pool.submit(job))
        if self.keep is not None and 0 < server_round < self.rounds:
            self.keep(server_round, self.final)

    def wait(self) -> None:
        """Wait for the evaluations still running (their errors raise here)."""
        for job in self.scoring:
            job.result()

    def _score(
        self, server_round: int, state: dict[str, torch.Tensor], personal: Any, spent: Any
    ) -> None:
        """Round ``server_round``'s rows: the global model ``state`` (and the personalised
        models the round's updates carried) on the test sets."""
        evaluation = self.scenario.evaluation
        self.model.load_state_dict(state)
        if personal is not None:
            evaluate_personal(
                self.results, self.personal_model, personal, self.modality_of, self.test,
                evaluation,
            )  # fmt: skip
        evaluate_round(self.results, server_round, self.model, self.test, evaluation)
        if spent is not None:
            self.results.privacy[server_round] = (spent.epsilon, spent.delta)
        if self.on_round is not None:
            self.on_round(server_round, self.rounds)


def _personal_models(strategy: Lifelong) -> dict[str, dict[str, torch.Tensor]]:
    """The personalised models the round's accepted updates carry, by site (the sites that
    trained this round: the others' are unchanged)."""
    return {
        update.site: update.reply.content.array_records[PERSONAL].to_torch_state_dict()
        for update in strategy.accepted
        if PERSONAL in update.reply.content.array_records
    }


def _snapshots(grid: Grid, checkpointing: Checkpointing | None) -> Checkpointing | None:
    """``checkpointing`` when checkpoints are asked for and ``grid`` can give the sites'
    state where they are to hold it."""
    if checkpointing is None or checkpointing.every <= 0 or checkpointing.save is None:
        return None
    if checkpointing.node_states and not isinstance(grid, InProcessGrid):
        logger.warning(
            "execution.checkpoint_every: the sites' state lives at the sites on this grid "
            "(%s); no mid-trial checkpoint is taken",
            type(grid).__name__,
        )
        return None
    return checkpointing


def _sites(grid: Grid, checkpointing: Checkpointing) -> InProcessGrid | None:
    """The grid whose sites' states a checkpoint holds (``node_states``: an in-process
    grid's), or None where the sites keep their own."""
    if not checkpointing.node_states:
        return None
    if not isinstance(grid, InProcessGrid):
        raise ConfigError("a checkpoint can only resume a trial on an in-process grid")
    return grid


def _save(
    snapshots: Checkpointing,
    grid: Grid,
    trial: Trial,
    strategy: Lifelong,
    results: TrialResults,
    state_key: StateKey,
    server_round: int,
    model: Mapping[str, np.ndarray],
) -> None:
    """Hand the trial's state after ``server_round`` to ``snapshots.save``, every
    ``snapshots.every`` rounds."""
    if server_round % snapshots.every == 0:
        assert snapshots.save is not None, "checked by _snapshots"
        snapshots.save(Checkpoint.capture(trial.trial_id, snapshots.fingerprint, server_round,
                                          model, strategy, results, state_key.federation,
                                          _sites(grid, snapshots)))  # fmt: skip
