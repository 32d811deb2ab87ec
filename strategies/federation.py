"""One trial as a federation: discover the sites, stream their arrivals over rounds,
aggregate, and evaluate the global model on each modality's test set after every round.

Flower's ``Grid`` is the only transport this module needs, so the very same code runs
in-process (a sweep's Ray task), under ``flwr run`` on the Simulation Engine, and against
real SuperNodes in deployment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from fedll.config.grid import Trial
from fedll.config.instruction import TrainInstruction
from fedll.config.schema import Scenario
from fedll.data.prepare import PreparedCohort
from fedll.evaluation import evaluate_round
from fedll.models import ModelLayout, build_model
from fedll.models.saved import model_state
from fedll.planning import plan_rounds, trial_stream
from fedll.results import TrialOutcome, TrialResults
from strategies.handshake import discover_sites, match_sites
from strategies.registry import build_strategy

logger = logging.getLogger(__name__)

RoundCallback = Callable[[int, int], None]


def run_federation(
    grid: Grid,
    scenario: Scenario,
    trial: Trial,
    prepared: PreparedCohort,
    threads: int = 1,
    on_round: RoundCallback | None = None,
    timeout: float = 3600.0,
) -> TrialOutcome:
    """Run one trial over ``grid``; returns its per-case Dice and attention rows and the
    global model's state after the last round."""
    torch.set_num_threads(max(1, threads))
    infos = discover_sites(grid, expected=len(scenario.sites), timeout=min(timeout, 300.0))
    bound = match_sites(scenario, infos)
    stream = trial_stream(scenario, trial, [s.name for s in scenario.sites if s.name not in bound])
    spec = scenario.models[trial.model]
    torch.manual_seed(trial.seed)
    model = build_model(spec.name, **spec.kwargs())
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
    )
    test = {m: prepared.test_slices(m) for m in prepared.test}
    results = TrialResults(trial=trial, stream=stream)
    final = {"state": model_state(model)}  # evaluate sees the global model every round

    def evaluate(server_round: int, arrays: ArrayRecord) -> None:
        model.load_state_dict(arrays.to_torch_state_dict())
        final["state"] = model_state(model)
        evaluate_round(results, server_round, model, test)
        if on_round is not None:
            on_round(server_round, len(stream))

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=len(stream),
        timeout=timeout,
        evaluate_fn=evaluate,
    )
    results.failures.update(strategy.failures)
    results.rejected.update(strategy.rejected)
    if left_out := [s.name for s in scenario.sites if s.name not in bound]:
        results.failures[0] = left_out  # round 0: the sites that never took part
    return TrialOutcome(results=results, state=final["state"])
