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
import random
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
from fedll.models import ModelLayout, build_model
from fedll.results.rows import TrialOutcome, TrialResults
from fedll.run.checkpoint import Checkpoint, CheckpointError, Checkpointing, verify
from fedll.run.planning import plan_rounds, trial_stream
from strategies.handshake import discover_sites, match_sites
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
    stream = trial_stream(scenario, trial, [s.name for s in scenario.sites if s.name not in bound])
    spec = scenario.models[trial.model]
    resume = checkpointing.resume if checkpointing is not None else None
    state_key = StateKey(
        trial=trial.trial_id,
        fingerprint=trial_fingerprint(scenario, trial),
        federation=resume.federation if resume and resume.federation else str(grid.run.run_id),
    )
    torch.manual_seed(trial.seed)
    model = build_model(spec.name, **spec.kwargs())
    initial = ArrayRecord(model.state_dict())
    model.to(device)
    template = TrainInstruction(
        model=spec,
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
    strategy = build_strategy(
        trial.strategy,
        plan=plan,
        layout=ModelLayout.of(model),
        site_of={i.node_id: n for n, i in bound.items()},
        training_lr=scenario.training.lr,
        seed=trial.seed,
    )
    results = TrialResults(trial=trial, stream=stream)
    snapshots = _snapshots(grid, checkpointing)
    done = 0
    if checkpointing is not None and resume is not None:
        fresh = {k: v.numpy() for k, v in initial.items()}
        done = _resume(checkpointing, len(stream), fresh, grid, strategy, results)
        initial = ArrayRecord({k: Array(v) for k, v in resume.model.items()})
        logger.info("resumed %s from round %d", trial.trial_id, done)
    strategy.round_offset = done
    round_timeout = scenario.execution.round_timeout
    strategy.round_timeout = round_timeout
    final: dict[str, np.ndarray] = {k: v.numpy() for k, v in initial.items()}
    # a scratch model for the personalised ones, where the rule sends them back (Ditto);
    # its initialisation leaves the RNG as it was (a resumed trial builds it later)
    personal_model = None
    if PERSONAL in declared(strategy.rule, "reply_arrays", ()):
        with torch.random.fork_rng(devices=[]):
            personal_model = build_model(spec.name, **spec.kwargs()).to(device)
    modality_of = {s.name: s.modality for s in scenario.sites}

    def score(server_round: int, state: dict[str, torch.Tensor], personal: Any, spent: Any) -> None:
        """Round ``server_round``'s rows: the global model ``state`` (and the personalised
        models the round's updates carried) on the test sets."""
        model.load_state_dict(state)
        if personal is not None:
            evaluate_personal(
                results, personal_model, personal, modality_of, test, scenario.evaluation
            )
        evaluate_round(results, server_round, model, test, scenario.evaluation)
        if spent is not None:
            results.privacy[server_round] = (spent.epsilon, spent.delta)
        if on_round is not None:
            on_round(server_round, len(stream))

    # Off the in-process grid the sites train in other processes (SuperNodes, the Simulation
    # Engine's workers): the global model is scored while the next round trains, in order,
    # on one thread. On it (a sweep's trial, one CPU) scoring stays in line, as do snapshots.
    overlap = not isinstance(grid, InProcessGrid) and snapshots is None
    scoring: list[Future[None]] = []

    def evaluate(flower_round: int, arrays: ArrayRecord) -> None:
        server_round = flower_round + done
        if flower_round == 0 and done:  # a resumed trial: its round was evaluated already
            return
        state = arrays.to_torch_state_dict()  # the arrays deserialised once, for both uses
        final.clear()
        final.update({k: v.numpy() for k, v in state.items()})
        personal = None
        if personal_model is not None and flower_round > 0:
            personal = _personal_models(strategy)
        job = partial(score, server_round, state, personal, privacy_spent(strategy.rule))
        if not overlap:
            job()
        else:
            for earlier in scoring:
                if earlier.done():
                    earlier.result()  # an evaluation's error ends the trial now
            scoring.append(evaluations.submit(job))
        if snapshots and 0 < server_round < len(stream) and server_round % snapshots.every == 0:
            assert snapshots.save is not None
            snapshots.save(_checkpoint(snapshots, trial, server_round, final, strategy, grid,
                                       results, state_key.federation))  # fmt: skip

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedll-evaluation") as evaluations:
        timed = round_timeout is not None and not isinstance(grid, InProcessGrid)
        strategy.start(
            grid=TimedGrid(grid, strategy.site_of) if timed else grid,
            initial_arrays=initial,
            num_rounds=len(stream) - done,
            timeout=timeout if round_timeout is None else round_timeout,
            evaluate_fn=evaluate,
        )
        for job in scoring:
            job.result()
    results.failures.update(strategy.failures)
    results.rejected.update(strategy.rejected)
    if left_out := [s.name for s in scenario.sites if s.name not in bound]:
        results.failures[0] = left_out  # round 0: the sites that never took part
    return TrialOutcome(results=results, state=dict(final))


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


def _checkpoint(
    checkpointing: Checkpointing,
    trial: Trial,
    server_round: int,
    model: Mapping[str, np.ndarray],
    strategy: Lifelong,
    grid: Grid,
    results: TrialResults,
    federation: str,
) -> Checkpoint:
    """The trial's state after ``server_round``; the sites' with ``node_states`` (an
    in-process grid's), the server's alone otherwise (the sites keep theirs)."""
    nodes, rng = {}, rng_states()
    if checkpointing.node_states:
        assert isinstance(grid, InProcessGrid), "checked by _snapshots"
        nodes, rng = grid.node_states(), {**rng, "grid": grid.rng_state()}
    return Checkpoint(
        trial_id=trial.trial_id,
        fingerprint=checkpointing.fingerprint,
        round=server_round,
        model={k: np.array(v) for k, v in model.items()},
        strategy=strategy.checkpoint_state(),
        nodes=nodes,
        rng=rng,
        results=results.snapshot(),
        federation=federation,
    )


def _resume(
    checkpointing: Checkpointing,
    rounds: int,
    model: Mapping[str, np.ndarray],
    grid: Grid,
    strategy: Lifelong,
    results: TrialResults,
) -> int:
    """Put the trial back to where ``checkpointing.resume`` left it, once it was found to
    fit the trial (:func:`fedll.run.checkpoint.verify`: its ``rounds``, the state dict ``model``
    of its fresh model, the grid's nodes; the strategy and the results take their state
    before anything global is set); returns the rounds already run. Without
    ``node_states`` the sites put back their own state. CheckpointError: it does not fit
    (its driver sets it aside and runs the trial from round 0)."""
    checkpoint = checkpointing.resume
    assert checkpoint is not None
    if checkpointing.node_states and not isinstance(grid, InProcessGrid):
        raise ConfigError("a checkpoint can only resume a trial on an in-process grid")
    source = f"checkpoint of {results.trial.trial_id}"
    verify(
        checkpoint, source, trial_id=results.trial.trial_id,
        fingerprint=checkpointing.fingerprint, rounds=rounds, model=model,
        nodes=grid.get_node_ids() if checkpointing.node_states else (),
    )  # fmt: skip
    try:
        strategy.restore_state(checkpoint.strategy)
        results.restore(checkpoint.results)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        reason = f"{type(error).__name__}: {error}"
        raise CheckpointError(f"{source}: its state does not fit the trial ({reason})") from None
    if checkpointing.node_states:
        assert isinstance(grid, InProcessGrid)
        grid.restore_node_states(checkpoint.nodes)
        grid.set_rng_state(checkpoint.rng["grid"])
    set_rng_states(checkpoint.rng)
    return checkpoint.round


def rng_states() -> dict[str, Any]:
    """This process's RNG states (torch, CUDA, NumPy's global one, Python's)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state().numpy(),
        "numpy": [kind, keys, int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        states["cuda"] = [s.numpy() for s in torch.cuda.get_rng_state_all()]
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Put back :func:`rng_states`."""
    torch.set_rng_state(torch.from_numpy(np.array(states["torch"], dtype=np.uint8)))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.from_numpy(np.array(s)) for s in states["cuda"]])
