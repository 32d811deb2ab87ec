"""One trial as a federation: discover the sites, stream their arrivals over rounds,
aggregate, and evaluate the global model on each modality's test set after every round.

Flower's ``Grid`` is the only transport this module needs, so the very same code runs
in-process (a sweep's Ray task), under ``flwr run`` on the Simulation Engine, and against
real SuperNodes in deployment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedll.config import Scenario, Trial
from fedll.data import MODALITIES
from fedll.data.prepare import PreparedCohort
from fedll.errors import ConfigError
from fedll.faults import Fault
from fedll.instructions import ModelSpec, SliceRecipe, TrainInstruction
from fedll.models import build_model
from fedll.results import TrialResults, evaluate_into
from fedll.stream import Round, SiteHoldings, build_stream, counted_holdings
from strategies.fedavg import ModelLayout
from strategies.registry import build_strategy

logger = logging.getLogger(__name__)

RoundCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class SiteInfo:
    """What a node said about itself in reply to ``query.meta``."""

    node_id: int
    name: str
    modality: str
    num_cases: int


def discover_sites(grid: Grid, expected: int, timeout: float = 300.0) -> list[SiteInfo]:
    """Wait up to ``timeout`` for ``expected`` nodes, then ask each who it is (``query.meta``).

    A node that cannot answer (a bad ``--node-config``, no data) is logged with its id and
    the reason and left out; so are sites that did not connect in time, if any node did.
    """
    deadline = time.monotonic() + timeout
    while len(node_ids := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            if not node_ids:
                raise ConfigError(f"no site connected within {timeout:.0f}s")
            logger.error(
                "only %d of %d sites connected within %.0fs; going on with them",
                len(node_ids),
                expected,
                timeout,
            )
            break
        time.sleep(0.5)
    messages = [
        Message(RecordDict({"meta": ConfigRecord()}), message_type="query.meta", dst_node_id=n)
        for n in node_ids
    ]
    infos = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            logger.error("node %d could not describe itself: %s", node, reply.error.reason)
            continue
        meta = reply.content["meta"]
        infos.append(
            SiteInfo(node, str(meta["site"]), str(meta["modality"]), int(meta["num-cases"]))
        )
    return sorted(infos, key=lambda s: s.name)


def match_sites(scenario: Scenario, infos: Sequence[SiteInfo]) -> dict[str, SiteInfo]:
    """The scenario's sites, each bound to the node that claims it.

    A site that did not join, holds another modality than the scenario says, or holds fewer
    cases than the scenario's ``patients`` is logged (naming the site and the node) and
    left out of the stream; the run goes on with the others.
    """
    names = {s.name for s in scenario.sites}
    for info in infos:
        if info.name not in names:
            logger.error(
                "node %d says it is site %s, which the scenario does not name; ignored",
                info.node_id,
                info.name,
            )
    by_name = {i.name: i for i in infos}
    bound: dict[str, SiteInfo] = {}
    for index, site in enumerate(scenario.sites):
        info = by_name.get(site.name)
        if info is None:
            problem = "did not join"
        elif info.modality != site.modality:
            problem = f"holds {info.modality}, the scenario says {site.modality}"
        elif info.num_cases < site.patients:
            problem = f"holds {info.num_cases} cases, the scenario asks {site.patients}"
        else:
            bound[site.name] = info
            continue
        node = "" if info is None else f" (node {info.node_id})"
        logger.error(
            "site %s (sites.%d)%s %s; it is left out of the stream",
            site.name,
            index,
            node,
            problem,
        )
    if not bound:
        raise ConfigError("none of the scenario's sites joined the federation")
    return bound


def ordering_among(
    ordering: str | Sequence[str], holdings: Sequence[SiteHoldings]
) -> str | list[str]:
    """The trial's ordering over the sites that joined: a listed site that did not join is
    dropped, and a named ordering that starts with a modality none of them holds starts with
    one they hold (``alternating`` with only FLAIR sites left is ``alternating:flair``)."""
    if not isinstance(ordering, str):
        names = {h.name for h in holdings}
        return [name for name in ordering if name in names]
    kind, _, first = ordering.partition(":")
    held = [m for m in MODALITIES if any(h.modality == m for h in holdings)]
    if kind != "random" and (first or MODALITIES[0]) not in held:
        return f"{kind}:{held[0]}"
    return ordering


def plan_rounds(
    stream: Sequence[Round],
    base: Mapping[str, object],
    node_of: Mapping[str, int],
    site_order: Sequence[str],
    seed: int,
    faults: Mapping[str, Fault] | None = None,
) -> dict[int, dict[int, dict[str, object]]]:
    """round -> node -> that node's instruction: which of its cases arrived (index range),
    and the fault the scenario injects at that site, if any.

    Each site's training seed derives from (trial seed, round, the site's position in the
    scenario), never from node ids, which Flower draws at random.
    """
    faults = faults or {}
    seen: dict[str, int] = {}
    plan: dict[int, dict[int, dict[str, object]]] = {}
    site_index = {name: i for i, name in enumerate(site_order)}
    for rnd in stream:
        per_site: dict[str, int] = {}
        for arrival in rnd.arrivals:
            per_site[arrival.site] = per_site.get(arrival.site, 0) + len(arrival.patients)
        plan[rnd.index] = {}
        for site, count in per_site.items():
            start = seen.get(site, 0)
            seen[site] = start + count
            site_seed = int(
                np.random.SeedSequence([seed, rnd.index, site_index[site]]).generate_state(1)[0]
            )
            plan[rnd.index][node_of[site]] = {
                **base,
                **faults.get(site, Fault()).to_config(),
                "arrival-start": start,
                "arrival-stop": start + count,
                "seed": site_seed,
            }
    return plan


def run_federation(
    grid: Grid,
    scenario: Scenario,
    trial: Trial,
    prepared: PreparedCohort,
    threads: int = 1,
    on_round: RoundCallback | None = None,
    timeout: float = 3600.0,
) -> TrialResults:
    """Run one trial over ``grid``; returns its per-case Dice and attention rows."""
    torch.set_num_threads(max(1, threads))
    infos = discover_sites(grid, expected=len(scenario.sites), timeout=min(timeout, 300.0))
    bound = match_sites(scenario, infos)
    holdings = counted_holdings(
        [(s.name, s.modality, s.patients) for s in scenario.sites if s.name in bound]
    )
    stream = build_stream(
        holdings,
        ordering_among(trial.ordering, holdings),
        trial.arrival_batch,
        trial.seed,
        trial.arrivals_per_round,
    )
    model_cfg = scenario.models[trial.model]
    spec = ModelSpec(name=model_cfg.name, kwargs=model_cfg.kwargs())
    torch.manual_seed(trial.seed)
    model = build_model(spec.name, **spec.kwargs)
    recipe = SliceRecipe.from_config(scenario.slices)
    template = TrainInstruction(
        model=spec,
        training=scenario.training,
        slices=recipe,
        arrival_start=0,
        arrival_stop=0,
        train_on=scenario.stream.train_on,
        seed=0,
        threads=threads,
        continual=trial.cl,
    ).to_config()
    node_of = {name: info.node_id for name, info in bound.items()}
    faults = {f.site: Fault.from_scenario(f) for f in scenario.faults}
    plan = plan_rounds(
        stream, template, node_of, [s.name for s in scenario.sites], trial.seed, faults
    )
    strategy = build_strategy(
        trial.strategy,
        plan=plan,
        layout=ModelLayout.of(model),
        site_of={i.node_id: n for n, i in bound.items()},
    )
    test = {m: prepared.test_slices(m) for m in prepared.test}
    results = TrialResults(trial=trial, stream=stream)

    def evaluate(server_round: int, arrays: ArrayRecord) -> None:
        model.load_state_dict(arrays.to_torch_state_dict())
        evaluate_into(results, server_round, model, test)
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
    return results


def trial_from_run_config(run_config: Mapping[str, object]) -> tuple[Scenario, Trial, Path]:
    """Scenario, trial and run directory named by a ServerApp's run config."""
    from fedll.config import expand_trials, load_scenario

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
