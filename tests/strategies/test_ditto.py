"""Ditto's server through the lifelong layer: sites are told to train their personalised
model, the global model is FedAvg's, the personalised models come back without being
aggregated, and a reply without a usable one is rejected.

At a site: the proximal term pulls the personalised model toward the global model it
received, by hand and as lambda grows."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from rule_replies import LAYOUT, SITES, model, options, plan, record, reply, start
from torch import nn

from fedll.config import TrainingConfig
from fedll.config.instruction import TrainInstruction
from fedll.errors import ConfigError
from fedll.training.continual import ProximalTerm
from fedll.training.train import train_local
from strategies.ditto import LAMBDA, DittoSite, train_personal
from strategies.registry import build_strategy, site_parts


def ditto(lam: float = 0.1):
    return build_strategy(options("ditto", lam=lam), plan((11, 12)), LAYOUT, SITES)


def site_parts_of(message):
    instruction = TrainInstruction.from_config(dict(message.content["config"]))
    return site_parts(message.content, RecordDict(), instruction)


def test_sites_are_told_to_personalise_with_lambda():
    messages = start(ditto(lam=0.5), 1, model([0.0, 0.0]))
    for message in messages.values():
        (part,) = site_parts_of(message)
        assert isinstance(part, DittoSite) and part.lam == 0.5 and part.kept is None
    fedavg = build_strategy(options("fedavg"), plan((11, 12)), LAYOUT, SITES)
    for message in start(fedavg, 1, model([0.0, 0.0])).values():
        assert site_parts_of(message) == []


@pytest.mark.parametrize("lam", [-0.5, "0.5", True])
def test_a_lambda_that_is_not_a_number_at_least_zero_is_one_line(lam):
    (message, _) = start(ditto(), 1, model([0.0, 0.0])).values()
    message.content["config"][LAMBDA] = lam
    line = f"train instruction from the server: ditto-lambda: {lam!r} is not >= 0"
    with pytest.raises(ConfigError, match=f"^{re.escape(line)}$"):
        site_parts_of(message)


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


# -- the site side ----------------------------------------------------------------------

SGD = TrainingConfig(optimizer="sgd", momentum=0.0, lr=0.1, epochs=3, batch_size=4)


def linear(weight: float, bias: float = 0.0) -> nn.Module:
    model = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        model.weight.fill_(weight)
        model.bias.fill_(bias)
    return model


def data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    images = rng.normal(size=(n, 1, 3, 3)).astype(np.float32)
    return images, (images > 0.0).astype(np.float32)


def anchor(weight: float, bias: float = 0.0) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in linear(weight, bias).named_parameters()}


def test_a_fixed_anchor_proximal_term_by_hand():
    term = ProximalTerm(mu=0.5, anchor=anchor(2.0, bias=1.0))
    model = linear(4.0, bias=1.0)
    term.before_training(model)  # a fixed anchor is not replaced by the model
    x = torch.ones(1, 1, 2, 2)
    # mu / 2 * ((4 - 2)^2 + (1 - 1)^2) = 0.25 * 4 = 1
    assert term.extra_loss(model, x, model(x)).item() == 1.0


def distance(model: nn.Module, to: dict[str, torch.Tensor]) -> float:
    return float(sum(((p.detach() - to[n]) ** 2).sum() for n, p in model.named_parameters()))


def test_the_proximal_term_pulls_the_personalised_model_toward_the_global_one():
    images, masks = data(8)
    w = anchor(0.0)
    after = {}
    for lam in (0.0, 1.0, 10.0):
        personal = linear(3.0, bias=-1.0)  # far from the global model
        result = train_personal(personal, w, images, masks, SGD, seed=0, lam=lam)
        assert result.steps == 6
        after[lam] = distance(personal, w)
    assert after[10.0] < after[1.0] < after[0.0]
    # lambda = 0 is plain local training of v on the site's slices
    plain = linear(3.0, bias=-1.0)
    train_local(plain, images, masks, SGD, seed=0)
    assert distance(plain, w) == after[0.0]


def test_one_step_by_hand():
    images, masks = data(4)
    w = anchor(1.0, bias=0.5)
    personal, reference = linear(2.0), linear(2.0)
    one = SGD.model_copy(update={"epochs": 1})
    train_personal(personal, w, images, masks, one, seed=0, lam=0.4)
    # the same step without the term, then its gradient lam (v - w) by hand
    train_local(reference, images, masks, one, seed=0)
    for (name, p), q in zip(personal.named_parameters(), reference.parameters(), strict=True):
        start = linear(2.0).state_dict()[name]
        expected = q.detach() - one.lr * 0.4 * (start - w[name])
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)
