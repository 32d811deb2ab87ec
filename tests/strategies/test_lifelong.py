"""The lifelong layer over any rule: what each of Flower's rules makes of hand-made replies
through it, the arrivals it shows a rule, the records it forwards, aggregates it refuses, a
rule's state across a checkpoint, and Flower's FedAvgM and FedProx against the hand-written
rules they replaced."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, Message, RecordDict
from flwr.serverapp.strategy import FedAvg
from rule_replies import (
    INSTRUCTION,
    LAYOUT,
    model,
    options,
    record,
    reply,
    run_round,
    start,
    through_checkpoint,
)

from fedll.config.flower import FLOWER_RULES
from fedll.config.instruction import TrainInstruction
from strategies.aggregation import weighted_average
from strategies.lifelong import Lifelong, conform, floating
from strategies.registry import RULE_DEFAULTS, build_strategy

SITES = {11: "a", 12: "b", 13: "c", 14: "d", 15: "e", 16: "f", 17: "g"}


def plan(nodes=(11, 12, 13), rounds=(1,)):
    return {r: {n: INSTRUCTION for n in nodes} for r in rounds}


@pytest.mark.parametrize("rule", [r.name for r in FLOWER_RULES])
def test_every_flower_rule_gives_a_model_through_the_layer(rule):
    """Seven updates, each a model with a float32 tensor, a norm buffer and an int64 counter:
    every rule's aggregate is shaped and typed as the model, finite, counters by max."""
    strategy = build_strategy(options(rule), plan(tuple(SITES)), LAYOUT, SITES, training_lr=0.01)
    updates = [model([i, -i], var=1.0 + i, steps=i) for i in range(1, 8)]
    out = run_round(strategy, 1, model([0.0, 0.0]), updates)
    assert out is not None, rule
    assert {k: v.dtype for k, v in out.items()} == {
        "w": np.float32,
        "bn.running_var": np.float32,
        "steps": np.int64,
    }
    assert all(np.isfinite(v).all() for v in out.values())
    assert out["steps"] == 7  # the largest counter, whatever the rule did to it


def test_flower_medians_and_trimmed_means_by_hand():
    updates = [model([v, 0.0]) for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
    nodes = (11, 12, 13, 14, 15)
    median = build_strategy(options("fedmedian"), plan(nodes), LAYOUT, SITES)
    np.testing.assert_allclose(run_round(median, 1, model([0, 0]), updates)["w"], [3.0, 0.0])
    trimmed = build_strategy(options("fedtrimmedavg", beta=0.2), plan(nodes), LAYOUT, SITES)
    # one of five cut at each end: mean(2, 3, 4) = 3
    np.testing.assert_allclose(run_round(trimmed, 1, model([0, 0]), updates)["w"], [3.0, 0.0])
    krum = build_strategy(options("krum", num_malicious_nodes=1), plan(nodes), LAYOUT, SITES)
    # the outlier (100) is never the update closest to its neighbours
    assert run_round(krum, 1, model([0, 0]), updates)["w"][0] in (2.0, 3.0)


def test_the_rule_sees_only_the_arriving_nodes_and_each_gets_its_instruction():
    seen = []

    class Recording(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):
            seen.append(sorted(grid.get_node_ids()))
            config["rule-key"] = 7
            return super().configure_train(server_round, arrays, config, grid)

    late = INSTRUCTION.model_copy(update={"arrival_start": 3, "arrival_stop": 5})
    strategy = Lifelong(Recording(**RULE_DEFAULTS), {1: {12: INSTRUCTION, 14: late}}, LAYOUT, SITES)
    messages = start(strategy, 1, model([0, 0]))
    assert seen == [[12, 14]] and list(messages) == [12, 14]  # the plan's order
    config = messages[14].content["config"]
    assert (config["arrival-start"], config["arrival-stop"]) == (3, 5)
    assert config["rule-key"] == 7 and config["server-round"] == 1
    # the sites get the model as it is: the counter an int64 (the rule saw it as a float)
    assert messages[12].content["arrays"]["steps"].dtype == "int64"
    assert start(strategy, 2, model([0, 0])) == {}  # a round nobody arrives in


def test_a_reply_with_an_array_record_the_rule_does_not_read_is_rejected():
    strategy = build_strategy(options("fedavg"), plan((11, 12)), LAYOUT, SITES)
    messages = start(strategy, 1, model([0, 0]))
    extra = {"personal": record(model([9, 9]))}
    replies = [reply(messages[11], model([1, 1]), **extra), reply(messages[12], model([3, 3]))]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [3, 3])
    assert strategy.rejected[1] == ["a"]


def test_a_rule_that_reads_more_records_gets_them_and_flower_rules_get_one():
    received = []

    class Reading(FedAvg):
        reply_arrays = ("control",)

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            received.extend(sorted(r.content.array_records) for r in replies)
            return super().aggregate_train(server_round, [_model_only(r) for r in replies])

    strategy = Lifelong(Reading(**RULE_DEFAULTS), plan((11,)), LAYOUT, SITES)
    messages = start(strategy, 1, model([0, 0]))
    strategy.aggregate_train(1, [reply(messages[11], model([1, 1]), control=record(model(0)))])
    assert received == [["arrays", "control"]]


def _model_only(message: Message) -> Message:
    message.content = RecordDict(
        {"arrays": message.content["arrays"], "metrics": message.content["metrics"]}
    )
    return message


def test_an_aggregate_that_is_not_finite_keeps_the_model(caplog):
    class Exploding(FedAvg):
        def aggregate_train(self, server_round, replies):
            arrays, metrics = super().aggregate_train(server_round, replies)
            arrays["w"] = Array(np.full(2, np.inf, np.float32))
            return arrays, metrics

    strategy = Lifelong(Exploding(**RULE_DEFAULTS), plan((11,)), LAYOUT, SITES)
    assert run_round(strategy, 1, model([0, 0]), [model([1, 1])]) is None
    assert "the aggregate of Exploding is unusable ('w' has non-finite values)" in caplog.text


def test_conform_casts_and_takes_counters_by_max():
    current = model([0, 0])
    merged = {"w": np.array([1, 2], np.float64), "bn.running_var": np.ones(2), "steps": 2.5}
    out, problem = conform(merged, current, [model([0, 0], steps=2), model([0, 0], steps=3)])
    assert problem is None and out["w"].dtype == np.float32 and out["steps"] == 3
    assert conform({"w": np.zeros(2)}, current, [current])[1] == "'bn.running_var' missing"
    record_ = floating(record(model([1, 1], steps=4)))
    assert record_["steps"].dtype == "float64" and record_["w"].dtype == "float32"


def reference_fedavgm(current, average, velocity, lr, momentum):
    """The hand-written FedAvgM fedll had before the layer (a server SGD step with momentum on
    the trainable tensors, in float64; buffers took the average)."""
    step = current["w"].astype(np.float64) - average["w"].astype(np.float64)
    if velocity is not None:
        step = momentum * velocity + step
    new = dict(average)
    new["w"] = np.asarray(current["w"] - lr * step, np.float32)
    return new, step


def test_flowers_fedavgm_matches_the_old_rule():
    rng = np.random.default_rng(0)
    nodes = (11, 12)
    strategy = build_strategy(
        options("fedavgm", server_lr=0.8, server_momentum=0.5),
        plan(nodes, rounds=(1, 2, 3)),
        LAYOUT,
        SITES,
    )
    ours = old = model(rng.normal(size=2))
    velocity = None
    for server_round in (1, 2, 3):
        updates = [model(old["w"] + rng.normal(size=2), var=1.0 + rng.random()) for _ in nodes]
        average = weighted_average(updates, [1.0, 3.0], LAYOUT.groups)
        old, velocity = reference_fedavgm(old, average, velocity, 0.8, 0.5)
        ours = run_round(strategy, server_round, ours, updates, samples=[1.0, 3.0])
        # the same weights to float32 rounding (Flower computes in float32, fedll did in float64)
        np.testing.assert_allclose(ours["w"], old["w"], rtol=1e-5, atol=1e-6)
        # buffers take the plain average, as they did: the layer overrides Flower's FedAvgM,
        # which steps every array (a momentum step on a running variance estimates nothing)
        np.testing.assert_array_equal(ours["bn.running_var"], old["bn.running_var"])


def test_a_rule_with_a_server_step_leaves_buffers_to_the_average_and_variances_stay_positive():
    updates = [model([1.0, 1.0], var=0.5), model([3.0, 3.0], var=1.5)]
    adam = build_strategy(options("fedadam", eta=1.0), plan((11, 12)), LAYOUT, SITES)
    out = run_round(adam, 1, model([0.0, 0.0], var=4.0), updates)
    np.testing.assert_array_equal(out["bn.running_var"], [1.0, 1.0])  # not Adam's step
    assert not np.allclose(out["w"], [2.0, 2.0])  # the weights took Adam's step

    class Overshooting(FedAvg):  # e.g. DP noise on a running variance
        def aggregate_train(self, server_round, replies):
            arrays, metrics = super().aggregate_train(server_round, replies)
            arrays["bn.running_var"] = Array(np.array([-0.5, 2.0], np.float32))
            return arrays, metrics

    layer = Lifelong(Overshooting(**RULE_DEFAULTS), plan((11,)), LAYOUT, SITES)
    out = run_round(layer, 1, model([0, 0]), [model([1, 1])])
    np.testing.assert_array_equal(out["bn.running_var"], [0.0, 2.0])


def test_flowers_fedprox_tells_the_sites_mu_and_averages_as_before():
    strategy = build_strategy(options("fedprox", mu=0.3), plan((11, 12)), LAYOUT, SITES)
    messages = start(strategy, 1, model([0, 0]))
    assert messages[11].content["config"]["proximal-mu"] == 0.3
    assert TrainInstruction.from_config(messages[11].content["config"]).proximal_mu == 0.3
    updates = [model([1.0, 2.0]), model([4.0, 8.0])]
    replies = [reply(messages[n], u, s) for n, u, s in zip((11, 12), updates, (1, 2), strict=True)]
    arrays, _ = strategy.aggregate_train(1, replies)
    expected = weighted_average(updates, [1, 2], LAYOUT.groups)  # the old rule's average
    np.testing.assert_allclose(arrays["w"].numpy(), expected["w"], rtol=1e-6)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_a_rules_state_survives_a_checkpoint(name):
    """Two rounds straight, or one round, a checkpoint, and the second round in a new
    strategy restored from it: the same model."""
    rng = np.random.default_rng(1)
    rounds = [[model(rng.normal(size=2)) for _ in range(2)] for _ in range(2)]

    def fresh():
        return build_strategy(options(name), plan((11, 12), rounds=(1, 2)), LAYOUT, SITES)

    straight = fresh()
    first = run_round(straight, 1, model([0, 0]), rounds[0])
    expected = run_round(straight, 2, first, rounds[1])

    interrupted = fresh()
    first = run_round(interrupted, 1, model([0, 0]), rounds[0])
    saved = through_checkpoint(interrupted, 1, first)
    resumed = fresh()
    resumed.restore_state(saved)
    np.testing.assert_array_equal(run_round(resumed, 2, first, rounds[1])["w"], expected["w"])
