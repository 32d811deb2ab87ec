"""Planning a trial's rounds: which site trains on which of its cases, with which seed.

Pure functions over the arrival stream (:mod:`fedll.federation.stream`): no Flower types. The node
ids they take come from the federation's handshake; each site's training seed derives from (trial
seed, round, the site's position in the scenario), never from node ids, which Flower draws at
random.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedll.config.grid import Trial
from fedll.config.instruction import TrainInstruction
from fedll.config.options import FaultConfig
from fedll.config.schema import Scenario
from fedll.data import MODALITIES
from fedll.federation.stream import Round, SiteHoldings, build_stream, counted_holdings


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
    template: TrainInstruction,
    node_of: Mapping[str, int],
    site_order: Sequence[str],
    seed: int,
    faults: Mapping[str, FaultConfig] | None = None,
) -> dict[int, dict[int, TrainInstruction]]:
    """round -> node -> that node's instruction: ``template`` with which of its cases arrived
    (an index range), its seed for the round, and the fault the scenario injects at that site.

    Each site's training seed derives from (trial seed, round, the site's position in
    ``site_order``), never from node ids, which Flower draws at random.
    """
    faults = faults or {}
    seen: dict[str, int] = {}
    plan: dict[int, dict[int, TrainInstruction]] = {}
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
            plan[rnd.index][node_of[site]] = template.model_copy(
                update={
                    "arrival_start": start,
                    "arrival_stop": start + count,
                    "seed": site_seed,
                    "fault": faults.get(site),
                }
            )
    return plan


def trial_stream(scenario: Scenario, trial: Trial, absent: Sequence[str] = ()) -> tuple[Round, ...]:
    """The rounds of a stream trial among the scenario's sites less ``absent`` (sites that
    never joined a deployment); a joint trial has one round."""
    if trial.kind == "joint":
        return (Round(1, ()),)
    holdings = counted_holdings(
        [(s.name, s.modality, s.patients) for s in scenario.sites if s.name not in absent]
    )
    ordering = ordering_among(trial.ordering, holdings)
    return build_stream(
        holdings, ordering, trial.arrival_batch, trial.seed, trial.arrivals_per_round
    )
