"""Round planning: which of its cases each site trains on, with which seed and fault."""

from __future__ import annotations

import numpy as np

from fedll.config import ModelConfig, SliceConfig, TrainingConfig
from fedll.config.instruction import TrainInstruction
from fedll.config.options import FaultConfig
from fedll.federation.stream import build_stream, counted_holdings
from fedll.run.planning import ordering_among, plan_rounds

TEMPLATE = TrainInstruction(
    model=ModelConfig(name="static"),
    training=TrainingConfig(),
    slices=SliceConfig(),
    arrival_start=0,
    arrival_stop=0,
    train_on="new",
    seed=0,
)


def test_each_site_trains_on_its_next_cases_with_a_seed_of_round_and_position():
    holdings = counted_holdings([("a", "t2", 3), ("b", "flair", 2), ("c", "t2", 2)])
    stream = build_stream(holdings, "alternating", arrival_batch=2, seed=0, arrivals_per_round=2)
    # chunks: a[0:2], a[2:3], b[0:2], c[0:2]; alternating T2 (a, c round-robin) and FLAIR:
    # a0, b0, c0, a1 -> rounds {a, b}, {c, a}
    nodes = {"a": 101, "b": 102, "c": 103}
    fault = FaultConfig(site="c", send="nan")
    plan = plan_rounds(stream, TEMPLATE, nodes, ["a", "b", "c"], seed=7, faults={"c": fault})
    assert {r: sorted(p) for r, p in plan.items()} == {1: [101, 102], 2: [101, 103]}
    ranges = {
        (r, n): (i.arrival_start, i.arrival_stop) for r, p in plan.items() for n, i in p.items()
    }
    assert ranges == {(1, 101): (0, 2), (1, 102): (0, 2), (2, 103): (0, 2), (2, 101): (2, 3)}
    for rnd, per_node in plan.items():
        for node, instruction in per_node.items():
            position = list(nodes.values()).index(node)
            expected = np.random.SeedSequence([7, rnd, position]).generate_state(1)[0]
            assert instruction.seed == int(expected)
            assert instruction.fault == (fault if node == 103 else None)
            assert instruction.model == TEMPLATE.model  # the rest is the template's


def test_node_ids_do_not_change_the_seeds():
    holdings = counted_holdings([("a", "t2", 1), ("b", "flair", 1)])
    stream = build_stream(holdings, "alternating", 1, 0)
    one = plan_rounds(stream, TEMPLATE, {"a": 5, "b": 6}, ["a", "b"], seed=1)
    two = plan_rounds(stream, TEMPLATE, {"a": 99, "b": 3}, ["a", "b"], seed=1)
    assert [i.seed for p in one.values() for i in p.values()] == [
        i.seed for p in two.values() for i in p.values()
    ]


def test_the_ordering_skips_the_sites_that_did_not_join():
    flair_only = counted_holdings([("f", "flair", 2)])
    assert ordering_among(["t", "f", "t", "f"], flair_only) == ["f", "f"]
    assert ordering_among("alternating", flair_only) == "alternating:flair"
    assert ordering_among("blocked:t2", flair_only) == "blocked:flair"
    assert ordering_among("alternating:flair", flair_only) == "alternating:flair"
    assert ordering_among("random", flair_only) == "random"
    both = counted_holdings([("t", "t2", 1), ("f", "flair", 1)])
    assert ordering_among("alternating", both) == "alternating"
