"""Flower's strategy contracts, asserted against the lifelong layer (a peer suite).

Flower tests its strategies (``flwr/serverapp/strategy/*_test.py``, and the legacy
``flwr/server/strategy/fedavg_test.py``) on mock replies: FedAvg is the weighted mean of every
array, 0-d arrays keep their shape, FedAvgM with a server learning rate of one and no
momentum is FedAvg, the median and trimmed mean and (Multi-)Krum select what they should,
Bulyan skips a round with too few replies, and a round whose replies break the reply contract
(one ArrayRecord, one MetricRecord holding the weight as one number, the same keys in every
reply) raises. The same contracts hold here through :class:`strategies.lifelong.Lifelong`,
except for the two fedll changes on purpose (docs/concepts/federation.md, "Flower's
contracts"): who is sampled (the sites that arrive, never a fraction of the connected nodes)
and what a bad reply does (it is rejected and the round goes on, instead of the round
raising).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg, FedProx
from rule_replies import INSTRUCTION, options, record

from fedll.federation.flower_private import assign_message_id, set_task_identity
from fedll.models import ModelLayout
from strategies.lifelong import Lifelong
from strategies.registry import RULE_DEFAULTS, build_strategy

NODES = {n: f"site-{n}" for n in range(11, 19)}


def layout(state: dict[str, np.ndarray]) -> ModelLayout:
    return ModelLayout(groups={k: "other" for k in state}, banks={}, trainable=frozenset(state))


class Round:
    """A strategy over ``len(updates)`` arriving nodes, and the round it configures."""

    def __init__(self, strategy: Lifelong, current: dict[str, np.ndarray], rounds: int = 1):
        self.strategy = strategy
        self.current = current
        self.rounds = rounds

    def run(self, server_round: int, replies_for) -> dict[str, np.ndarray] | None:
        set_task_identity(run_id=1, node_id=SUPERLINK_NODE_ID, task_id=1)
        sent = list(
            self.strategy.configure_train(server_round, record(self.current), ConfigRecord(), None)
        )
        for i, message in enumerate(sent):
            assign_message_id(message, f"r{server_round}-{i}")
        arrays, _ = self.strategy.aggregate_train(server_round, replies_for(sent))
        if arrays is None:
            return None
        self.current = {k: v.numpy() for k, v in arrays.items()}
        return self.current


def through_layer(
    rule_or_name: Any, current: dict[str, np.ndarray], nodes: int, rounds: int = 1, **kwargs
) -> Round:
    plan = {r: {n: INSTRUCTION for n in list(NODES)[:nodes]} for r in range(1, rounds + 1)}
    if isinstance(rule_or_name, str):
        strategy = build_strategy(options(rule_or_name, **kwargs), plan, layout(current), NODES)
    else:
        strategy = Lifelong(rule_or_name, plan, layout(current), NODES)
    return Round(strategy, current, rounds)


def replies(updates, weights):
    """Replies to the sent messages, in order: each its update and its weight."""

    def make(sent):
        return [
            Message(
                RecordDict(
                    {"arrays": record(u), "metrics": MetricRecord({"num-examples": float(w)})}
                ),
                reply_to=m,
            )
            for m, u, w in zip(sent, updates, weights, strict=True)
        ]

    return make


def aggregate(name_or_rule, updates, weights=None, current=None, **kwargs):
    weights = weights or [1.0] * len(updates)
    current = current or {k: np.zeros_like(v) for k, v in updates[0].items()}
    step = through_layer(name_or_rule, current, len(updates), **kwargs)
    return step.run(1, replies(updates, weights))


# -- FedAvg (flwr/server/strategy/fedavg_test.py, serverapp/strategy/strategy_utils_test.py) --


@pytest.mark.parametrize("rule", ["fedavg", FedAvg(**RULE_DEFAULTS)], ids=["fedll", "flower"])
def test_fedavg_is_the_weighted_mean_of_every_array(rule):
    rng = np.random.default_rng(3)
    updates = [
        {"a": rng.normal(size=(5, 4)), "b": rng.normal(size=(2, 3, 2)), "c": rng.normal(size=())}
        for _ in range(3)
    ]
    weights = [2.0, 5.0, 3.0]
    out = aggregate(rule, updates, weights)
    for key in ("a", "b", "c"):
        expected = np.average([u[key] for u in updates], axis=0, weights=weights)
        np.testing.assert_allclose(out[key], expected, rtol=1e-12)
    assert out["c"].shape == ()  # a 0-d array stays 0-d


@pytest.mark.parametrize(
    "name", ["fedavg", "fedavgm", "fedmedian", "fedtrimmedavg", "fedadam", "fedyogi", "fedadagrad"]
)
def test_zero_dim_arrays_keep_their_shape_and_stay_finite(name):
    updates = [{"s": np.array(v)} for v in (1.0, 4.0, 2.0, 3.0)]
    out = aggregate(name, updates, current={"s": np.array(0.0)})
    assert out["s"].shape == () and np.isfinite(out["s"])


# -- FedAvgM (serverapp/strategy/fedavgm_test.py) ----------------------------------------------


def test_fedavgm_with_lr_one_and_no_momentum_is_fedavg():
    updates = [
        {"w": np.array([[2.0, 4.0], [6.0, 8.0]], np.float32)},
        {"w": np.ones((2, 2), np.float32)},
    ]
    out = aggregate("fedavgm", updates, [3.0, 1.0], server_lr=1.0 + 1e-9, server_momentum=0.0)
    np.testing.assert_allclose(out["w"], (3 * updates[0]["w"] + updates[1]["w"]) / 4, rtol=1e-6)


def test_fedavgm_with_near_zero_momentum_is_fedavg_over_two_rounds():
    updates = [{"w": np.array([3.0, -3.0], np.float32)}, {"w": np.array([1.0, 5.0], np.float32)}]
    step = through_layer(
        "fedavgm", {"w": np.zeros(2, np.float32)}, 2, rounds=2, server_momentum=1e-9
    )
    step.run(1, replies(updates, [1.0, 1.0]))
    out = step.run(2, replies(updates, [1.0, 1.0]))
    np.testing.assert_allclose(out["w"], [2.0, 1.0], rtol=1e-5)


# -- robust rules (fedmedian_test.py, fedtrimmedavg_test.py, multikrum_test.py, bulyan) --------


def test_fedmedian_ignores_the_weights():
    updates = [{"w": np.array(v)} for v in ([4.0, 0.0, 9.0], [1.0, 7.0, 2.0], [2.0, 3.0, 5.0])]
    out = aggregate("fedmedian", updates, [100.0, 1.0, 1.0])
    np.testing.assert_array_equal(out["w"], [2.0, 3.0, 5.0])


def test_trimmed_mean_cuts_a_quarter_at_each_end():
    updates = [{"w": np.array([v])} for v in (-50.0, 1.0, 2.0, 60.0)]
    np.testing.assert_array_equal(aggregate("fedtrimmedavg", updates, beta=0.25)["w"], [1.5])


def test_krum_picks_the_update_closest_to_its_neighbours_and_multikrum_averages_the_best():
    updates = [{"w": np.full(3, v)} for v in (0.1, 0.4, 0.5, 3.0)]
    np.testing.assert_allclose(aggregate("krum", updates, num_malicious_nodes=1)["w"], 0.4)
    multi = aggregate("multikrum", updates, num_malicious_nodes=1, num_nodes_to_select=2)
    np.testing.assert_allclose(multi["w"], 0.45)


def test_bulyan_skips_a_round_with_fewer_than_4f_plus_3_updates_and_resists_one_outlier():
    few = [{"w": np.array([v])} for v in (1.0, 2.0, 3.0)]
    assert aggregate("bulyan", few, num_malicious_nodes=1) is None  # the model is kept
    seven = [{"w": np.array([v])} for v in (1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1000.0)]
    out = aggregate("bulyan", seven, num_malicious_nodes=1)
    assert 0.9 <= out["w"][0] <= 1.1


# -- the reply contract (strategy_utils_test.py: validate_message_reply_consistency) ---------

GOOD = {"w": np.ones(2)}


def content(kind: str) -> RecordDict:
    """A reply's content that breaks the contract in one way (or keeps it: ``good``)."""
    arrays, metrics = record(GOOD), MetricRecord({"num-examples": 1.0})
    return {
        "good": RecordDict({"arrays": arrays, "metrics": metrics}),
        "weight-a-list": RecordDict(
            {"arrays": arrays, "metrics": MetricRecord({"num-examples": [1.0]})}
        ),
        "no-weight": RecordDict({"arrays": arrays, "metrics": MetricRecord({"loss": 0.1})}),
        "no-metricrecord": RecordDict({"arrays": arrays}),
        "two-arrayrecords": RecordDict({"arrays": arrays, "other": record(GOOD), "m": metrics}),
        "two-metricrecords": RecordDict(
            {"arrays": arrays, "metrics": metrics, "more": MetricRecord({"loss": 0.3})}
        ),
        "other-metric-keys": RecordDict(
            {"arrays": arrays, "metrics": MetricRecord({"num-examples": 1.0, "extra": 2.0})}
        ),
        "other-array-keys": RecordDict({"arrays": record({"v": np.ones(2)}), "metrics": metrics}),
        "other-shape": RecordDict({"arrays": record({"w": np.ones(3)}), "metrics": metrics}),
    }[kind]


BAD = [
    "weight-a-list",
    "no-weight",
    "no-metricrecord",
    "two-arrayrecords",
    "two-metricrecords",
    "other-metric-keys",
    "other-array-keys",
    "other-shape",
]


@pytest.mark.parametrize("kind", [k for k in BAD if k not in ("other-array-keys", "other-shape")])
def test_flower_raises_on_a_round_with_a_bad_reply(kind):
    """The contract as Flower enforces it: the whole round raises. (Flower's FedAvg compares
    the replies with each other, not with the model: fedll checks names and shapes against
    the global model too.)"""
    rule = FedAvg(**RULE_DEFAULTS)
    sent = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (11, 12)]
    set_task_identity(run_id=1, node_id=SUPERLINK_NODE_ID, task_id=1)
    for i, m in enumerate(sent):
        assign_message_id(m, f"m{i}")
    bad = [Message(content("good"), reply_to=sent[0]), Message(content(kind), reply_to=sent[1])]
    with pytest.raises(InconsistentMessageReplies):
        rule.aggregate_train(1, bad)


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("name", ["fedavg", "fedmedian", "fedadam"])
def test_the_layer_rejects_the_bad_reply_and_aggregates_the_rest(kind, name):
    step = through_layer(name, {"w": np.zeros(2)}, 2)

    def make(sent):
        first = Message(content("good"), reply_to=sent[0])
        return [first, Message(content(kind), reply_to=sent[1])]

    out = step.run(1, make)
    assert out is not None and out["w"].shape == (2,)
    assert step.strategy.rejected[1] == ["site-12"]


def test_error_replies_are_never_aggregated():
    step = through_layer("fedavg", {"w": np.zeros(2)}, 2)

    def make(sent):
        return [
            Message(content("good"), reply_to=sent[0]),
            Message(Error(code=2, reason="crashed"), reply_to=sent[1]),
        ]

    np.testing.assert_array_equal(step.run(1, make)["w"], [1.0, 1.0])
    assert step.strategy.failures[1] == ["site-12"]


# -- who is sampled (fedavg_test.py: num_fit_clients) -----------------------------------------


def test_flower_samples_a_fraction_of_the_connected_nodes_the_layer_the_arrivals():
    class Grid:
        def get_node_ids(self):
            return list(NODES)

    set_task_identity(run_id=1, node_id=SUPERLINK_NODE_ID, task_id=1)
    rule = FedProx(**{**RULE_DEFAULTS, "fraction_train": 0.5, "min_available_nodes": 0})
    sampled = rule.configure_train(1, record(GOOD), ConfigRecord(), Grid())
    assert len(list(sampled)) == 4  # Flower: half of the eight connected nodes
    # the layer: exactly the arriving sites, each once, whatever the eight connected nodes
    plan = {1: {13: INSTRUCTION, 17: INSTRUCTION}}
    layer = Lifelong(FedProx(**RULE_DEFAULTS), plan, layout(GOOD), NODES)
    sent = layer.configure_train(1, record(GOOD), ConfigRecord(), Grid())
    assert sorted(m.metadata.dst_node_id for m in sent) == [13, 17]
