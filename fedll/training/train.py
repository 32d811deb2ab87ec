"""Local training and evaluation of a segmentation model: plain torch, no Flower.

Loss: binary cross-entropy plus soft Dice on whole-tumour logits, plus the model's routing
regulariser (weighted by the model's own ``routing_loss_weights``; 0 for static models and by
default), plus the extra
terms of any :class:`TrainingHook` (continual-learning penalties, FedProx's proximal term; see
:mod:`fedll.training.continual`). One optimiser step advances the dynamic-convolution temperature
schedule once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedll.config.instruction import TrainInstruction
from fedll.config.schema import TrainingConfig
from fedll.data import modality_indices
from fedll.models.inspection import (
    advance_schedule,
    last_attention,
    routes_by_modality,
    routing_loss,
)
from fedll.run.device import Precision, autocast, grad_scaler

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


class TrainingHook:
    """What :func:`train_local` calls besides its own loss; every call does nothing here, and
    a hook overrides the ones it needs: the continual-learning methods
    (:class:`fedll.training.continual.ContinualMethod`) and SCAFFOLD's correction
    (:class:`strategies.scaffold.ControlVariates`). ``modality`` and ``modalities`` are what the
    model is given (None unless it routes by modality), so a hook that runs the model (LwF's
    teacher, EWC's Fisher) can give them too."""

    def before_training(self, model: nn.Module) -> None:
        """Called once with the received model, before the first step."""

    def extra_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        logits: torch.Tensor,
        modality: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """A term added to the loss of the batch ``x`` (B, 1, H, W) with ``logits``
        (None: nothing to add)."""
        return None

    def before_step(self, model: nn.Module) -> None:
        """Called after every backward pass with the model's gradients (unscaled), before
        the optimiser steps (SCAFFOLD corrects them here)."""

    def after_training(
        self,
        model: nn.Module,
        images: np.ndarray,
        masks: np.ndarray,
        modalities: np.ndarray | None = None,
    ) -> None:
        """Called once with the trained model and the slices it trained on (and their
        modality indices, as the model was given them)."""


Arrays = dict[str, np.ndarray]
"""Named arrays: a model's state or an ArrayRecord's content (parameter name -> array)."""


class SitePart:
    """What a strategy does at a site besides training the global model (SCAFFOLD's gradient
    correction, Ditto's personalised model); every call does nothing here, and a part
    overrides the ones it needs. The ClientApp calls them in this order, once per round:
    :meth:`received`, :meth:`hooks` (before the global model trains), :meth:`finish` (after).
    A strategy's part is built from the train message by the factory its entry in
    :data:`strategies.registry.STRATEGIES` names."""

    def received(self, model: nn.Module) -> None:
        """The global model as the site received it (its own normalisation layers overlaid,
        on the site's device), before anything trains it."""

    def hooks(self) -> list[TrainingHook]:
        """Hooks for the global model's training, after the CL method's and FedProx's."""
        return []

    def finish(
        self,
        instruction: TrainInstruction,
        images: np.ndarray,
        masks: np.ndarray,
        modalities: np.ndarray | None,
        device: torch.device,
    ) -> tuple[dict[str, Arrays], dict[str, Arrays]]:
        """After the global model trained on ``images`` / ``masks`` (N, 1, H, W) (``modalities``
        as the model was given them): the part's records for the reply and for the site's
        kept state (record name -> arrays)."""
        return {}, {}


def make_optimizer(
    model: nn.Module,
    cfg: TrainingConfig,
    state: dict[int, dict[str, torch.Tensor]] | None = None,
) -> torch.optim.Optimizer:
    """The optimiser the scenario asks for; ``state`` (per-parameter moments from an earlier
    round) resumes its moments, with this round's hyper-parameters.

    It holds every parameter, frozen ones too (:func:`fedll.models.inspection.
    freeze_routing`): those get no gradient, which the optimiser skips, and the parameters
    keep their indices in ``state`` whether or not some are frozen this round."""
    params = list(model.parameters())
    # foreach: the multi-tensor step (PyTorch's default on CUDA) on the CPU too; the same
    # arithmetic as the per-parameter loop, bit for bit, in fewer kernel calls
    if cfg.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True
        )
    else:
        optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True
        )
    if state is not None:
        resumed = optimizer.state_dict()
        resumed["state"] = state
        optimizer.load_state_dict(resumed)
    return optimizer


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each mini-batch of ``n`` samples; a last batch of one sample (which
    batch norm cannot train on) is folded into the one before it."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [(start, starts[i + 1] if i + 1 < len(starts) else n) for i, start in enumerate(starts)]


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """BCE + soft Dice over the batch. logits, target: (B, 1, H, W)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    soft_dice = (2 * inter + eps) / (prob.sum() + target.sum() + eps)
    return bce + (1 - soft_dice)


def accumulate_attention(total: dict[str, np.ndarray], attention: dict[str, torch.Tensor]) -> None:
    """Add each layer's attention summed over the batch to ``total`` (float64, in place)."""
    for name, att in attention.items():
        mass = att.detach().float().sum(dim=0).cpu().numpy().astype(np.float64)
        total[name] = total[name] + mass if name in total else mass


def slice_modalities(model: nn.Module, modalities: Sequence[str]) -> np.ndarray | None:
    """int64 (N,): the :data:`fedll.data.MODALITIES` index of each slice's modality, for a
    ``model`` that routes by modality; None for any other model (it is not given one)."""
    return modality_indices(modalities) if routes_by_modality(model) else None


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    hooks: Sequence[TrainingHook],
    precision: Precision = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    modality: torch.Tensor | None = None,
) -> float:
    """One optimiser step on a batch; returns its loss. Advances the temperature schedule.
    The forward pass and the loss run under ``precision``'s autocast; with a ``scaler``
    (fp16) the loss is scaled before the backward pass, and the gradients unscaled before
    the hooks' ``before_step`` (the scaler's step would unscale them at the same point).
    ``modality`` (B,): each sample's modality index, for a model that routes by it."""
    with autocast(x.device, precision):
        logits = model(x) if modality is None else model(x, modality)
        loss = segmentation_loss(logits, y) + routing_loss(model)
        for hook in hooks:
            extra = hook.extra_loss(model, x, logits, modality)
            if extra is not None:
                loss = loss + extra
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        for hook in hooks:
            hook.before_step(model)
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        for hook in hooks:
            hook.before_step(model)
        scaler.step(optimizer)
        scaler.update()
    advance_schedule(model)
    return float(loss.detach())


def train_local(
    model: nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    cfg: TrainingConfig,
    seed: int,
    optimizer_state: dict[int, dict[str, torch.Tensor]] | None = None,
    hooks: Sequence[TrainingHook] = (),
    modalities: np.ndarray | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``images`` (N, 1, H, W) float32 and ``masks`` (N, 1, H, W).

    Batches go to the model's device; the forward pass runs in ``cfg.precision``. The
    mini-batch order comes from ``seed``; ``optimizer_state`` (from an earlier call)
    resumes the optimiser's moments when the scenario keeps them across rounds; each of
    ``hooks`` sees the model before the first step, adds its ``extra_loss`` at every step,
    sees the gradients before every optimiser step and sees the trained model and its data
    at the end. ``modalities`` (N,) int64, each slice's index in
    :data:`fedll.data.MODALITIES`, goes to the model with each batch (a model that routes by
    modality needs it; the others ignore it).
    """
    n = len(images)
    if n == 0:
        return TrainResult(loss=float("nan"), steps=0, samples=0)
    for hook in hooks:
        hook.before_training(model)
    optimizer = make_optimizer(model, cfg, optimizer_state)
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model)
    scaler = grad_scaler(device, cfg.precision)
    x_all = torch.tensor(images, dtype=torch.float32).to(device)
    y_all = torch.tensor(masks, dtype=torch.float32).to(device)
    m_all = None if modalities is None else torch.as_tensor(modalities, dtype=torch.long).to(device)
    model.train()
    losses: list[float] = []
    mass: dict[str, np.ndarray] = {}
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        for start, stop in batch_bounds(n, cfg.batch_size):
            idx = order[start:stop].to(device)
            modality = None if m_all is None else m_all[idx]
            losses.append(
                _step(
                    model,
                    optimizer,
                    x_all[idx],
                    y_all[idx],
                    hooks,
                    cfg.precision,
                    scaler,
                    modality,
                )
            )
            if epoch == cfg.epochs - 1:
                accumulate_attention(mass, last_attention(model))
    state = optimizer.state_dict()["state"] if cfg.optimizer_state == "keep" else None
    for hook in hooks:
        hook.after_training(model, images, masks, modalities)
    return TrainResult(
        loss=float(np.mean(losses)),
        steps=len(losses),
        samples=n,
        attention_mass=mass,
        optimizer_state=state,
    )
