"""Local training: the mini-batch plan, the hooks' order, seeding, kept optimiser moments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedll.config import TrainingConfig
from fedll.training.train import batch_bounds, make_optimizer, segmentation_loss, train_local


@pytest.mark.parametrize(
    ("n", "size", "bounds"),
    [
        (4, 2, [(0, 2), (2, 4)]),
        (5, 2, [(0, 2), (2, 5)]),  # a last batch of one sample joins the one before
        (17, 16, [(0, 17)]),
        (1, 16, [(0, 1)]),  # a lone sample stays a batch: there is nothing to join
        (7, 3, [(0, 3), (3, 7)]),
        (8, 3, [(0, 3), (3, 6), (6, 8)]),
    ],
)
def test_batch_bounds(n, size, bounds):
    assert batch_bounds(n, size) == bounds


class Recorder:
    """A training hook that records what it was given."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def before_training(self, model: nn.Module) -> None:
        self.calls.append("before")

    def extra_loss(self, model, x, logits, modality=None):
        self.calls.append(f"loss{len(x)}")
        return None

    def before_step(self, model) -> None:
        # after the backward pass: every parameter has its gradient
        assert all(p.grad is not None for p in model.parameters())
        self.calls.append("step")

    def after_training(self, model, images, masks, modalities=None) -> None:
        self.calls.append(f"after{len(images)}")


def data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, 1, 4, 4)).astype(np.float32)
    return images, (images > 0.5).astype(np.uint8)


def test_hooks_see_each_step_and_the_batch_norm_rule_holds():
    """5 samples in batches of 2 for 2 epochs: steps of 2 and 3 (never 1), 4 in all."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Conv2d(2, 1, 1))
    hook = Recorder()
    images, masks = data(5)
    result = train_local(model, images, masks, TrainingConfig(epochs=2, batch_size=2), 0,
                         hooks=[hook])  # fmt: skip
    assert hook.calls == [
        "before", *["loss2", "step", "loss3", "step"] * 2, "after5",
    ]  # fmt: skip
    assert (result.steps, result.samples) == (4, 5) and np.isfinite(result.loss)


def test_no_data_trains_nothing():
    model = nn.Conv2d(1, 1, 1)
    before = model.weight.detach().clone()
    result = train_local(model, *data(0), TrainingConfig(), 0)
    assert (result.steps, result.samples) == (0, 0) and np.isnan(result.loss)
    assert torch.equal(model.weight, before)


def test_the_seed_fixes_the_batch_order():
    images, masks = data(12)
    cfg = TrainingConfig(epochs=20, batch_size=4, lr=0.05)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(0)
        model = nn.Conv2d(1, 1, 3, padding=1)
        train_local(model, images, masks, cfg, seed)
        runs.append((model.weight.detach().clone(), seed))
    assert torch.equal(runs[0][0], runs[1][0]) and not torch.equal(runs[0][0], runs[2][0])


def test_training_lowers_the_loss():
    images, masks = data(12)
    torch.manual_seed(0)
    model = nn.Conv2d(1, 1, 3, padding=1)
    x, y = torch.tensor(images), torch.tensor(masks).float()
    before = float(segmentation_loss(model(x), y).detach())
    train_local(model, images, masks, TrainingConfig(epochs=30, batch_size=4, lr=0.05), 0)
    assert float(segmentation_loss(model(x), y).detach()) < 0.8 * before


def test_kept_moments_resume_the_optimiser():
    images, masks = data(6)
    keep = TrainingConfig(epochs=1, batch_size=3, optimizer_state="keep")
    torch.manual_seed(0)
    model = nn.Conv2d(1, 1, 1)
    result = train_local(model, images, masks, keep, 0)
    assert result.optimizer_state is not None and result.optimizer_state[0]["step"] == 2
    resumed = make_optimizer(model, keep, result.optimizer_state)
    assert resumed.state_dict()["state"][0]["step"] == 2
    reset = train_local(
        model, images, masks, keep.model_copy(update={"optimizer_state": "reset"}), 0
    )
    assert reset.optimizer_state is None


@pytest.mark.parametrize(
    "recipe",
    [
        {"optimizer": "adam", "lr": 0.01},
        {"optimizer": "adam", "lr": 0.01, "weight_decay": 1e-3},
        {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
    ],
    ids=["adam", "adam-decay", "sgd-momentum"],
)
def test_the_optimiser_steps_exactly_as_the_per_parameter_loop(recipe):
    # make_optimizer takes PyTorch's multi-tensor step: the same bits as its plain loop
    from fedll.models import build_model

    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = (torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.8).float()
    models = []
    for loop in (False, True):
        torch.manual_seed(0)
        model = build_model("dycnn", base_width=4, depth=1)
        optimizer = make_optimizer(model, TrainingConfig(**recipe))
        assert all(group["foreach"] for group in optimizer.param_groups)
        if loop:
            for group in optimizer.param_groups:
                group["foreach"] = False
        for _ in range(3):
            optimizer.zero_grad()
            segmentation_loss(model(x), y).backward()
            optimizer.step()
        models.append(model)
    for (name, a), b in zip(
        models[0].state_dict().items(), models[1].state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
