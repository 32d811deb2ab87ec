"""SCAFFOLD's server through the lifelong layer: hand-made replies, the global step and the
control variate worked out by hand, replies without a usable control-variate change
rejected, and the control variate across a checkpoint.

At a site: option II of the control-variate update by hand, and the corrected gradient steps
of plain SGD on a 1x1 convolution (a linear model, pixel by pixel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rule_replies import (
    LAYOUT,
    SITES,
    model,
    options,
    plan,
    record,
    reply,
    start,
    through_checkpoint,
)
from torch import nn

from fedll.config import TrainingConfig
from fedll.training.train import train_local
from strategies.registry import build_strategy
from strategies.scaffold import ControlVariates, control_step, control_update, server_step

FOUR_SITES = SITES  # N = 4; two of them train in a round


def scaffold(server_lr: float = 1.0):
    return build_strategy(
        options("scaffold", server_lr=server_lr),
        plan((11, 12), rounds=(1, 2)),
        LAYOUT,
        FOUR_SITES,
    )


def delta(values) -> dict:
    return {"control-delta": record({"w": np.asarray(values, np.float32)})}


def aggregate(strategy, server_round, messages, updates):
    """Each (state, samples, extra records) of ``updates`` replies to the next message."""
    replies = [
        reply(m, state, n, **extra)
        for m, (state, n, extra) in zip(messages.values(), updates, strict=True)
    ]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return None if arrays is None else {k: v.numpy() for k, v in arrays.items()}


def test_the_global_step_and_the_control_variate_by_hand():
    strategy = scaffold(server_lr=0.5)
    messages = start(strategy, 1, model([0.0, 0.0]))
    for m in messages.values():  # c starts at zero, one array per trainable key
        assert list(m.content["control"]) == ["w"]
        np.testing.assert_array_equal(m.content["control"]["w"].numpy(), [0.0, 0.0])
    out = aggregate(
        strategy,
        1,
        messages,
        [
            (model([2.0, 4.0], var=1.0, steps=1), 1.0, delta([4.0, 0.0])),
            (model([6.0, 0.0], var=3.0, steps=2), 3.0, delta([0.0, 8.0])),
        ],
    )
    # weighted mean of w: (1 * [2, 4] + 3 * [6, 0]) / 4 = [5, 1]; x = 0 + 0.5 * ([5, 1] - 0)
    np.testing.assert_allclose(out["w"], [2.5, 0.5])
    # the running variance is a buffer: the weighted mean (1 + 9) / 4, no server step
    np.testing.assert_allclose(out["bn.running_var"], [2.5, 2.5])
    assert out["steps"] == 2 and out["w"].dtype == np.float32
    # c = 0 + |S| / N * mean(delta) = 2 / 4 * [2, 4] = [1, 2]
    np.testing.assert_allclose(strategy.rule.control["w"], [1.0, 2.0])
    second = start(strategy, 2, out)
    for m in second.values():
        np.testing.assert_allclose(m.content["control"]["w"].numpy(), [1.0, 2.0])


def test_with_a_unit_step_the_model_is_fedavgs():
    updates = [model([0.1, 0.7], var=2.0, steps=3), model([0.3, -0.2], var=5.0, steps=1)]
    samples = [3.0, 7.0]
    fedavg = build_strategy(options("fedavg"), plan((11, 12)), LAYOUT, FOUR_SITES)
    messages = start(fedavg, 1, model([0.5, 0.5]))
    expected, _ = fedavg.aggregate_train(
        1, [reply(m, u, n) for m, u, n in zip(messages.values(), updates, samples, strict=True)]
    )
    strategy = scaffold()
    messages = start(strategy, 1, model([0.5, 0.5]))
    got = aggregate(
        strategy,
        1,
        messages,
        [(u, n, delta([1.0, 1.0])) for u, n in zip(updates, samples, strict=True)],
    )
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value.numpy(), err_msg=key)


def test_an_update_without_a_usable_control_delta_is_rejected():
    strategy = scaffold()
    messages = start(strategy, 1, model([0.0, 0.0]))
    out = aggregate(
        strategy,
        1,
        messages,
        [
            (model([1.0, 1.0]), 1.0, {}),  # no control-delta
            (model([3.0, 3.0]), 1.0, delta([np.nan, 0.0])),
        ],
    )
    assert out is None  # nothing usable: the model is kept
    assert strategy.rejected[1] == ["a", "b"]
    np.testing.assert_array_equal(strategy.rule.control["w"], [0.0, 0.0])  # c unchanged

    messages = start(strategy, 2, model([0.0, 0.0]))
    out = aggregate(
        strategy,
        2,
        messages,
        [
            (model([1.0, 1.0]), 1.0, delta([4.0, 4.0])),
            (model([3.0, 3.0]), 1.0, {"control-delta": record({"w": np.zeros(3, np.float32)})}),
        ],
    )
    np.testing.assert_allclose(out["w"], [1.0, 1.0])  # site b's delta is mis-shaped
    np.testing.assert_allclose(strategy.rule.control["w"], [1.0, 1.0])  # 1 / 4 * [4, 4]
    assert strategy.rejected[2] == ["b"]


def test_the_control_variate_survives_a_checkpoint():
    rounds = [
        [(model([1.0, 2.0]), 1.0, delta([2.0, 0.0])), (model([3.0, 0.0]), 1.0, delta([2.0, 4.0]))],
        [(model([0.0, 1.0]), 2.0, delta([-1.0, 1.0])), (model([1.0, 1.0]), 1.0, delta([0.0, 3.0]))],
    ]
    straight = scaffold(server_lr=0.7)
    first = aggregate(straight, 1, start(straight, 1, model([0.0, 0.0])), rounds[0])
    expected = aggregate(straight, 2, start(straight, 2, first), rounds[1])

    interrupted = scaffold(server_lr=0.7)
    first = aggregate(interrupted, 1, start(interrupted, 1, model([0.0, 0.0])), rounds[0])
    saved = through_checkpoint(interrupted, 1, first)
    (rule,) = saved["rule"]
    assert "control" in rule["arrays"]
    resumed = scaffold(server_lr=0.7)
    resumed.restore_state(saved)
    np.testing.assert_array_equal(resumed.rule.control["w"], [1.0, 1.0])  # (2+2, 0+4) / 4
    got = aggregate(resumed, 2, start(resumed, 2, first), rounds[1])
    np.testing.assert_array_equal(got["w"], expected["w"])
    np.testing.assert_array_equal(resumed.rule.control["w"], straight.rule.control["w"])


def test_the_server_step_and_the_control_step_are_pure():
    current = {"w": np.array([1.0, 1.0], np.float32), "b": np.array([9.0], np.float32)}
    average = {"w": np.array([3.0, -1.0], np.float32), "b": np.array([5.0], np.float32)}
    out = server_step(current, average, ["w"], 0.25)
    np.testing.assert_allclose(out["w"], [1.5, 0.5])  # 1 + 0.25 * (3 - 1), 1 + 0.25 * (-2)
    np.testing.assert_array_equal(out["b"], [5.0])  # not a trainable key: the average
    control = {"w": np.array([1.0, 0.0], np.float32)}
    deltas = [{"w": np.array([3.0, 3.0])}, {"w": np.array([1.0, -1.0])}]
    np.testing.assert_allclose(control_step(control, deltas, 8)["w"], [1.5, 0.25])


# -- the site side ----------------------------------------------------------------------

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
