"""Local training and evaluation of a segmentation model: plain torch, no Flower.

Loss: binary cross-entropy plus soft Dice on whole-tumour logits, plus the model's routing
regulariser (weighted by the model's own ``routing_loss_weights``; 0 for static models and by
default), plus the extra
terms of any :class:`TrainingHook` (continual-learning penalties, FedProx's proximal term; see
:mod:`fedll.continual`). One optimiser step advances the dynamic-convolution temperature
schedule once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedll.config import TrainingConfig
from fedll.metrics import dice
from fedll.models import advance_schedule, last_attention, routing_loss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What one local training pass produced."""

    loss: float
    steps: int
    samples: int
    # layer -> attention summed over the training samples of the last epoch: (K,) or (C_out, G)
    attention_mass: dict[str, np.ndarray] = field(default_factory=dict)
    # per-parameter optimiser moments ({index: {name: tensor}}), when the scenario keeps them
    optimizer_state: dict[int, dict[str, torch.Tensor]] | None = None


class TrainingHook(Protocol):
    """What :func:`train_local` calls besides its own loss (see :mod:`fedll.continual`)."""

    def before_training(self, model: nn.Module) -> None: ...

    def extra_loss(
        self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor | None: ...

    def after_training(self, model: nn.Module, images: np.ndarray, masks: np.ndarray) -> None: ...


@dataclass(frozen=True)
class Evaluation:
    """Per-case Dice and, for dynamic models, the mean attention per layer."""

    dice: list[float]
    attention: dict[str, np.ndarray] = field(default_factory=dict)


def make_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """The optimiser the scenario asks for."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """BCE + soft Dice over the batch. logits, target: (B, 1, H, W)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    soft_dice = (2 * inter + eps) / (prob.sum() + target.sum() + eps)
    return bce + (1 - soft_dice)


def _accumulate(total: dict[str, np.ndarray], attention: dict[str, torch.Tensor]) -> None:
    for name, att in attention.items():
        mass = att.detach().sum(dim=0).cpu().numpy().astype(np.float64)
        total[name] = total[name] + mass if name in total else mass


def train_local(
    model: nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    cfg: TrainingConfig,
    seed: int,
    optimizer_state: dict[int, dict[str, torch.Tensor]] | None = None,
    hooks: Sequence[TrainingHook] = (),
) -> TrainResult:
    """Train ``model`` in place on ``images`` (N, 1, H, W) float32 and ``masks`` (N, 1, H, W).

    The mini-batch order comes from ``seed``; ``optimizer_state`` (from an earlier call)
    resumes the optimiser's moments when the scenario keeps them across rounds; each of
    ``hooks`` sees the model before the first step, adds its ``extra_loss`` at every step and
    sees the trained model and its data at the end.
    """
    n = len(images)
    if n == 0:
        return TrainResult(loss=float("nan"), steps=0, samples=0)
    for hook in hooks:
        hook.before_training(model)
    optimizer = make_optimizer(model, cfg)
    if optimizer_state is not None:
        # the moments come from an earlier round; the hyper-parameters from this one
        resumed = optimizer.state_dict()
        resumed["state"] = optimizer_state
        optimizer.load_state_dict(resumed)
    generator = torch.Generator().manual_seed(seed)
    x_all = torch.tensor(images, dtype=torch.float32)
    y_all = torch.tensor(masks, dtype=torch.float32)
    model.train()
    losses: list[float] = []
    mass: dict[str, np.ndarray] = {}
    steps = 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        # a last batch of one sample breaks batch norm; fold it into the previous one
        starts = list(range(0, n, cfg.batch_size))
        if len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else n
            idx = order[start:stop]
            x = x_all[idx]
            logits = model(x)
            loss = segmentation_loss(logits, y_all[idx])
            loss = loss + routing_loss(model)
            for hook in hooks:
                extra = hook.extra_loss(model, x, logits)
                if extra is not None:
                    loss = loss + extra
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            advance_schedule(model)
            steps += 1
            losses.append(float(loss.detach()))
            if epoch == cfg.epochs - 1:
                _accumulate(mass, last_attention(model))
    state = optimizer.state_dict()["state"] if cfg.optimizer_state == "keep" else None
    for hook in hooks:
        hook.after_training(model, images, masks)
    return TrainResult(
        loss=float(np.mean(losses)),
        steps=steps,
        samples=n,
        attention_mass=mass,
        optimizer_state=state,
    )


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Whole-tumour predictions (N, 1, H, W) bool for images (N, 1, H, W)."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.tensor(images[start : start + batch_size], dtype=torch.float32)
        out.append((model(x) > 0).numpy())
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:], dtype=bool)


@torch.no_grad()
def evaluate_cases(
    model: nn.Module,
    cases: Sequence[Any],
    batch_size: int = 32,
    collect_attention: bool = False,
) -> Evaluation:
    """Dice per case (whole tumour over the case's evaluated slices, as one volume).

    ``cases`` hold ``images`` (N, 1, H, W) and ``masks`` (N, 1, H, W), e.g.
    :class:`fedll.data.slices.CaseSlices`. With ``collect_attention``, also the mean
    attention per dynamic layer over all evaluated slices.
    """
    model.eval()
    scores: list[float] = []
    mass: dict[str, np.ndarray] = {}
    slices = 0
    for case in cases:
        preds = []
        for start in range(0, len(case.images), batch_size):
            # a copy: cached slices are read-only memory maps
            chunk = torch.tensor(case.images[start : start + batch_size], dtype=torch.float32)
            preds.append((model(chunk) > 0).numpy())
            if collect_attention:
                _accumulate(mass, last_attention(model))
        slices += len(case.images)
        scores.append(dice(np.concatenate(preds), np.asarray(case.masks) > 0))
    attention = {name: m / max(slices, 1) for name, m in mass.items()}
    return Evaluation(dice=scores, attention=attention)
