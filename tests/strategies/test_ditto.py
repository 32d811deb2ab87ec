"""Ditto's server through the lifelong layer: sites are told to train their personalised
model, the global model is FedAvg's, the personalised models come back without being
aggregated, and a reply without a usable one is rejected."""

from __future__ import annotations

import numpy as np
from rule_replies import LAYOUT, SITES, model, options, plan, record, reply, start

from fedll.config.instruction import TrainInstruction
from strategies.registry import build_strategy


def ditto(lam: float = 0.1):
    return build_strategy(options("ditto", lam=lam), plan((11, 12)), LAYOUT, SITES)


def test_sites_are_told_to_personalise_with_lambda():
    messages = start(ditto(lam=0.5), 1, model([0.0, 0.0]))
    for message in messages.values():
        instruction = TrainInstruction.from_config(dict(message.content["config"]))
        assert instruction.ditto and instruction.ditto_lambda == 0.5
    fedavg = build_strategy(options("fedavg"), plan((11, 12)), LAYOUT, SITES)
    for message in start(fedavg, 1, model([0.0, 0.0])).values():
        assert not TrainInstruction.from_config(dict(message.content["config"])).ditto


def test_the_personalised_models_are_not_aggregated():
    strategy = ditto()
    messages = start(strategy, 1, model([0.0, 0.0]))
    personal = [model([100.0, 100.0], var=7.0), model([-50.0, 3.0], var=9.0)]
    replies = [
        reply(m, update, n, personal=record(p))
        for m, update, n, p in zip(
            messages.values(), [model([1.0, 2.0]), model([3.0, 6.0])], [1.0, 3.0], personal,
            strict=True,
        )
    ]  # fmt: skip
    arrays, _ = strategy.aggregate_train(1, replies)
    out = {k: v.numpy() for k, v in arrays.items()}
    np.testing.assert_allclose(out["w"], [2.5, 5.0])  # (1 * [1, 2] + 3 * [3, 6]) / 4
    np.testing.assert_allclose(out["bn.running_var"], [1.0, 1.0])
    # the layer keeps the round's accepted updates, their personalised models with them
    kept = {u.site: u.reply.content["personal"]["w"].numpy() for u in strategy.accepted}
    np.testing.assert_array_equal(kept["a"], [100.0, 100.0])
    np.testing.assert_array_equal(kept["b"], [-50.0, 3.0])


def test_a_reply_without_a_usable_personalised_model_is_rejected():
    strategy = ditto()
    messages = start(strategy, 1, model([0.0, 0.0]))
    bad = model([np.nan, 0.0])
    m11, m12 = messages.values()
    arrays, _ = strategy.aggregate_train(
        1, [reply(m11, model([1.0, 1.0])), reply(m12, model([5.0, 5.0]), personal=record(bad))]
    )
    assert arrays is None and strategy.rejected[1] == ["a", "b"]
