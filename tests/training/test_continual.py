"""Continual-learning hooks at a site: penalties and buffers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedll.config import TrainingConfig
from fedll.config.options import (
    ContinualOptions,
    EWCOptions,
    FineTuneOptions,
    ReplayOptions,
    option_types,
)
from fedll.training.continual import (
    EWC,
    METHODS,
    ContinualMethod,
    LwF,
    ProximalTerm,
    build_method,
    empirical_fisher,
    reservoir,
)
from fedll.training.train import segmentation_loss, train_local


def pixel_model(weight: float, bias: float = 0.0) -> nn.Module:
    """A 1x1 convolution: logits = weight * x + bias, pixel by pixel."""
    model = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        model.weight.fill_(weight)
        model.bias.fill_(bias)
    return model


def set_weight(model: nn.Module, weight: float) -> None:
    with torch.no_grad():
        model.weight.fill_(weight)


X = torch.ones(1, 1, 2, 2)


@pytest.mark.parametrize("options", option_types(ContinualOptions))
def test_every_cl_method_of_the_schema_builds_and_trains(options):
    method = build_method(
        options(name=options.model_fields["name"].annotation.__args__[0]), {}, 0, 2
    )
    model = pixel_model(1.0)
    result = train_local(
        model, np.ones((2, 1, 2, 2), np.float32), np.ones((2, 1, 2, 2), np.float32),
        TrainingConfig(epochs=1, batch_size=2), seed=0, hooks=[method],
    )  # fmt: skip
    assert result.steps == 1 and np.isfinite(result.loss)
    assert isinstance(method, METHODS[options])


def test_proximal_term_by_hand():
    model = pixel_model(1.0, bias=0.5)
    prox = ProximalTerm(mu=0.5)
    prox.before_training(model)
    assert prox.extra_loss(model, X, model(X)).item() == 0.0
    set_weight(model, 3.0)
    # mu / 2 * (3 - 1)^2 = 0.25 * 4 = 1 (the bias did not move)
    assert prox.extra_loss(model, X, model(X)).item() == pytest.approx(1.0)


def test_ewc_penalty_by_hand():
    state = {
        "fisher/weight": np.full((1, 1, 1, 1), 2.0),
        "fisher/bias": np.zeros(1),
        "anchor/weight": np.full((1, 1, 1, 1), 1.0),
        "anchor/bias": np.zeros(1),
    }
    method = build_method(EWCOptions(name="ewc", weight=10.0), state, seed=0, server_round=3)
    model = pixel_model(3.0)
    # weight / 2 * F * (w - w*)^2 = 5 * 2 * 4 = 40
    assert method.extra_loss(model, X, model(X)).item() == pytest.approx(40.0)


def test_ewc_has_no_penalty_in_its_first_round_then_keeps_fisher_and_anchor():
    method = EWC({}, seed=0, decay=0.5)
    model = pixel_model(1.0)
    assert method.extra_loss(model, X, model(X)) is None
    images = np.ones((3, 1, 2, 2), np.float32)
    masks = np.ones((3, 1, 2, 2), np.float32)
    method.after_training(model, images, masks)
    kept = method.state()
    assert set(kept) == {"fisher/weight", "fisher/bias", "anchor/weight", "anchor/bias"}
    np.testing.assert_array_equal(kept["anchor/weight"], [[[[1.0]]]])
    # the next round resumes it; Fisher decays by 0.5 and adds the new one (the same here)
    again = EWC(kept, seed=0, decay=0.5)
    again.after_training(model, images, masks)
    np.testing.assert_allclose(again.state()["fisher/weight"], 1.5 * kept["fisher/weight"])


def test_empirical_fisher_is_the_mean_squared_per_slice_gradient():
    model = pixel_model(0.3, bias=-0.2)
    rng = np.random.default_rng(1)
    images = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    masks = (rng.random((4, 1, 3, 3)) > 0.5).astype(np.float32)
    fisher = empirical_fisher(model, images, masks, samples=64, seed=0)
    expected = torch.zeros(1)
    for i in range(4):
        loss = segmentation_loss(
            model(torch.tensor(images[i : i + 1])), torch.tensor(masks[i : i + 1])
        )
        (grad,) = torch.autograd.grad(loss, model.bias)
        expected += grad**2 / 4
    torch.testing.assert_close(fisher["bias"], expected)


def test_lwf_distils_the_received_model_from_the_second_round():
    model = pixel_model(0.0)  # logits 0: the teacher says 0.5 everywhere
    first = LwF(server_round=1, weight=2.0, temperature=2.0)
    first.before_training(model)
    assert first.extra_loss(model, X, model(X)) is None
    lwf = LwF(server_round=2, weight=2.0, temperature=2.0)
    lwf.before_training(model)
    logits = model(X)
    loss = lwf.extra_loss(model, X, logits)
    # BCE(0, sigmoid(0)) = ln 2 per pixel; times the weight 2
    assert loss.item() == pytest.approx(2 * math.log(2))
    # where student and teacher agree the distillation pulls nowhere
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.count_nonzero(grad) == 0
    lwf.after_training(model, np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2)))
    assert lwf.teacher is None


def test_reservoir_keeps_everything_until_full_then_stays_full():
    buffer, seen = reservoir([], 0, [0, 1], capacity=3, seed=0)
    assert (buffer, seen) == ([0, 1], 2)
    buffer, seen = reservoir(buffer, seen, [2, 3, 4, 5], capacity=3, seed=0)
    assert seen == 6 and len(buffer) == 3 and set(buffer) <= set(range(6))
    assert reservoir([0, 1], 2, [2, 3, 4, 5], 3, seed=0) == (buffer, seen)  # seeded


def test_reservoir_is_uniform_over_what_it_has_seen():
    counts = np.zeros(8)
    for seed in range(2000):
        buffer, _ = reservoir([], 0, range(8), capacity=2, seed=seed)
        counts[buffer] += 1
    # every case is kept with probability 2 / 8
    np.testing.assert_allclose(counts / 2000, 0.25, atol=0.04)


def test_replay_trains_on_the_arrivals_and_its_buffer_and_keeps_it():
    first = build_method(ReplayOptions(name="replay", buffer=4), {}, seed=0, server_round=1)
    assert first.select_cases(range(0, 2)) == [0, 1]
    kept = first.state()
    np.testing.assert_array_equal(kept["buffer"], [0, 1])
    second = build_method(ReplayOptions(name="replay", buffer=4), kept, seed=1, server_round=3)
    assert second.select_cases(range(2, 4)) == [2, 3, 0, 1]
    assert sorted(second.state()["buffer"].tolist()) == [0, 1, 2, 3]
    assert int(second.state()["seen"]) == 4


def test_fine_tuning_changes_nothing():
    method = build_method(FineTuneOptions(name="finetune"), {}, seed=0, server_round=1)
    assert method.select_cases(range(3, 5)) == [3, 4]
    assert method.extra_loss(pixel_model(1.0), X, X) is None
    assert method.state() == {}


class Recorder(ContinualMethod):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def before_training(self, model: nn.Module) -> None:
        self.calls.append("before")

    def extra_loss(self, model, x, logits, modality=None):
        self.calls.append("extra")
        return torch.zeros(())

    def after_training(self, model, images, masks, modalities=None) -> None:
        self.calls.append(f"after {len(images)}")


def test_train_local_calls_every_hook():
    hooks = [Recorder(), Recorder()]
    images = np.zeros((6, 1, 8, 8), np.float32)
    masks = np.zeros((6, 1, 8, 8), np.float32)
    cfg = TrainingConfig(epochs=2, batch_size=4)
    result = train_local(pixel_model(0.1), images, masks, cfg, seed=0, hooks=hooks)
    assert result.steps == 4
    for hook in hooks:
        assert hook.calls == ["before", *["extra"] * 4, "after 6"]


@pytest.mark.parametrize("options", option_types(ContinualOptions))
def test_every_cl_method_runs_a_modality_routed_model(options):
    """LwF's teacher and EWC's Fisher run the model too: they are given the slices' modality."""
    from fedll.models import build_model

    method = build_method(
        options(name=options.model_fields["name"].annotation.__args__[0]), {}, 0, 2
    )
    model = build_model("dycnn", seed=0, base_width=4, depth=1, routing="modality-soft")
    images = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    masks = (images > 1).astype(np.float32)
    cfg = TrainingConfig(epochs=2, batch_size=2)
    kwargs = {"seed": 0, "hooks": [method], "modalities": np.array([1, 1, 1, 1])}
    assert train_local(model, images, masks, cfg, **kwargs).steps == 4
    if isinstance(method, EWC):
        assert method.fisher["stem.conv1.acp.logits"][1].abs().sum() > 0
        assert method.fisher["stem.conv1.acp.logits"][0].abs().sum() == 0  # no T2 slice
        train_local(model, images, masks, cfg, **kwargs)  # now with the penalty
