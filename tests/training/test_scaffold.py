"""SCAFFOLD at a site: option II of the control-variate update by hand, and the corrected
gradient steps of plain SGD on a 1x1 convolution (a linear model, pixel by pixel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedll.config import TrainingConfig
from fedll.training.scaffold import ControlVariates, control_update
from fedll.training.train import train_local

SGD = TrainingConfig(optimizer="sgd", momentum=0.0, lr=0.1, epochs=1, batch_size=4)


def test_option_two_by_hand():
    site = {"w": np.array([0.5, 0.0], np.float32)}
    server = {"w": np.array([1.0, -1.0], np.float32)}
    received = {"w": np.array([2.0, 2.0], np.float32)}
    trained = {"w": np.array([1.0, 4.0], np.float32)}
    # K lr = 4 * 0.25 = 1: c_i+ = c_i - c + (x - y) = [0.5 - 1 + 1, 0 + 1 - 2] = [0.5, -1]
    new, delta = control_update(site, server, received, trained, steps=4, lr=0.25)
    np.testing.assert_allclose(new["w"], [0.5, -1.0])
    np.testing.assert_allclose(delta["w"], [0.0, -1.0])
    assert new["w"].dtype == np.float32
    # a site's first round: c_i = 0
    new, delta = control_update({}, server, received, trained, steps=4, lr=0.25)
    np.testing.assert_allclose(new["w"], [0.0, -1.0])
    np.testing.assert_allclose(delta["w"], new["w"])
    with pytest.raises(ValueError, match="steps >= 1"):
        control_update(site, server, received, trained, steps=0, lr=0.25)


def linear(weight: float = 0.5, bias: float = 0.0) -> nn.Module:
    model = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        model.weight.fill_(weight)
        model.bias.fill_(bias)
    return model


def data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    images = rng.normal(size=(n, 1, 3, 3)).astype(np.float32)
    return images, (images > 0.2).astype(np.float32)


class RawGradients:
    """Keeps each step's gradients before a later hook corrects them."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def before_training(self, model):
        pass

    def extra_loss(self, model, x, logits, modality=None):
        return None

    def before_step(self, model):
        self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})

    def after_training(self, model, images, masks, modalities=None):
        pass


def controls(model: nn.Module, server: float, site: float) -> tuple[dict, dict]:
    """Constant control variates for each parameter of ``model``."""
    shapes = {n: p.shape for n, p in model.named_parameters()}
    return (
        {n: np.full(s, server, np.float32) for n, s in shapes.items()},
        {n: np.full(s, site, np.float32) for n, s in shapes.items()},
    )


def test_one_sgd_step_is_corrected_by_c_minus_c_i():
    model = linear()
    images, masks = data(4)
    server, site = controls(model, server=0.3, site=-0.2)  # c - c_i = 0.5
    raw, hook = RawGradients(), ControlVariates(server, site, SGD.lr)
    x = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_local(model, images, masks, SGD, seed=0, hooks=[raw, hook])
    assert result.steps == 1 and hook.steps == 1
    (g,) = raw.steps
    for name, p in model.named_parameters():
        # y = x - lr (g - c_i + c)
        expected = x[name] - SGD.lr * (g[name] + 0.5)
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)
        # with K = 1, c_i+ = c_i - c + (x - y) / lr = the raw gradient at x
        np.testing.assert_allclose(hook.site_control[name], g[name].numpy(), atol=1e-6)
        np.testing.assert_allclose(hook.delta[name], g[name].numpy() + 0.2, atol=1e-6)


def test_over_k_steps_the_new_control_is_the_mean_raw_gradient():
    model = linear(weight=-0.3, bias=0.1)
    images, masks = data(12)
    server, site = controls(model, server=0.05, site=0.4)
    raw, hook = RawGradients(), ControlVariates(server, site, SGD.lr)
    cfg = SGD.model_copy(update={"epochs": 2})
    result = train_local(model, images, masks, cfg, seed=1, hooks=[raw, hook])
    assert result.steps == hook.steps == 6  # 3 batches of 4, twice
    for name, _ in model.named_parameters():
        mean = torch.stack([step[name] for step in raw.steps]).mean(dim=0).numpy()
        # (x - y) / (K lr) is the mean corrected gradient, mean(g) + c - c_i
        np.testing.assert_allclose(hook.site_control[name], mean, atol=1e-5)
        np.testing.assert_allclose(hook.delta[name], mean - 0.4, atol=1e-5)


def test_zero_controls_leave_training_unchanged():
    images, masks = data(8)
    plain, corrected = linear(), linear()
    train_local(plain, images, masks, SGD, seed=2)
    server, site = controls(corrected, server=0.0, site=0.0)
    train_local(corrected, images, masks, SGD, seed=2, hooks=[ControlVariates(server, site, 0.1)])
    for a, b in zip(plain.parameters(), corrected.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
