"""Ditto's personalised step at a site: the proximal term pulls the personalised model
toward the global model it received, by hand and as lambda grows."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedll.config import TrainingConfig
from fedll.training.continual import ProximalTerm
from fedll.training.ditto import train_personal
from fedll.training.train import train_local

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
