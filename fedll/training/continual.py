"""Continual-learning (CL) methods at a site: a small protocol with few hooks.

:func:`fedll.training.train.train_local` calls, for every hook it is given,
``before_training(model)`` once, ``extra_loss(model, x, logits)`` at every step (added to the loss
when not None), ``before_step(model)`` after every backward pass and ``after_training(model, images,
masks)`` once. A :class:`ContinualMethod` adds
``select_cases`` (which of the site's cases to train on) and ``state()``, the arrays it keeps
between a site's rounds (in the ClientApp's ``context.state``; nothing leaves the site).

Methods, by their YAML names (the option classes of :data:`fedll.config.options.ContinualOptions`):

- ``finetune``: train on the arrived cases, nothing else (the lower bound);
- ``ewc``: online elastic weight consolidation (Kirkpatrick et al., PNAS 2017; Schwarz et al.
  2018): a diagonal empirical Fisher and the weights the site ended its last round with;
- ``lwf``: learning without forgetting (Li & Hoiem, ECCV 2016): distil the model the site
  received on the site's own slices;
- ``replay``: a reservoir (Vitter 1985) of the site's own earlier cases, trained on with
  each arrival.

:class:`ProximalTerm` (FedProx's ``mu / 2 ||w - w_global||^2``) uses the same hooks.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedll.config.options import (
    ContinualOptions,
    EWCOptions,
    FineTuneOptions,
    LwFOptions,
    ReplayOptions,
)
from fedll.training.train import TrainingHook, model_device, segmentation_loss

ArrayState = dict[str, np.ndarray]


class ContinualMethod(TrainingHook):
    """Fine-tuning; the base of every CL method: a :class:`fedll.training.train.TrainingHook` (every
    call does nothing) that also picks the cases to train on and keeps state between rounds."""

    @classmethod
    def build(
        cls, options: Mapping[str, Any], state: Mapping[str, np.ndarray], seed: int, round_: int
    ) -> ContinualMethod:
        """The method with its ``options``, resumed from the site's kept ``state``; ``seed``
        is the site's seed and ``round_`` the server round."""
        return cls(**options)

    def select_cases(self, arrived: Sequence[int]) -> list[int]:
        """The site's case indices to train on this round, given those that arrived."""
        return list(arrived)

    def state(self) -> ArrayState:
        """What the site keeps for its next round."""
        return {}


class ProximalTerm(ContinualMethod):
    """FedProx's proximal term ``mu / 2 * sum ||w - w_received||^2`` over trainable weights;
    with an ``anchor`` (parameter name -> tensor), ``mu / 2 * sum ||w - anchor||^2`` (Ditto's
    personalised model is pulled toward the global model it received)."""

    def __init__(self, mu: float, anchor: Mapping[str, torch.Tensor] | None = None) -> None:
        self.mu = float(mu)
        self.fixed = None if anchor is None else dict(anchor)
        self.anchor: dict[str, torch.Tensor] = {}

    def before_training(self, model: nn.Module) -> None:
        if self.fixed is None:
            self.anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
        else:
            device = model_device(model)
            self.anchor = {n: a.detach().to(device) for n, a in self.fixed.items()}

    def extra_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        logits: torch.Tensor,
        modality: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        return _weighted_distance(model, self.anchor, None, self.mu / 2)


class EWC(ContinualMethod):
    """Online EWC: penalty ``weight / 2 * sum_n F_n (w_n - w*_n)^2``.

    After each round the site's Fisher becomes ``decay * F + F_new`` (``F_new``: the mean over
    up to ``fisher_samples`` of its slices, one at a time, of the squared gradient of the
    segmentation loss, in eval mode) and ``w*`` the weights it trained to. The first round
    has no penalty.
    """

    def __init__(
        self,
        state: Mapping[str, np.ndarray],
        seed: int,
        weight: float = 100.0,
        decay: float = 1.0,
        fisher_samples: int = 64,
    ) -> None:
        self.weight, self.decay, self.seed = float(weight), float(decay), seed
        self.fisher_samples = fisher_samples
        self.fisher = _prefixed(state, "fisher/")
        self.anchor = _prefixed(state, "anchor/")

    @classmethod
    def build(
        cls, options: Mapping[str, Any], state: Mapping[str, np.ndarray], seed: int, round_: int
    ) -> EWC:
        return cls(state, seed, **options)

    def before_training(self, model: nn.Module) -> None:
        device = model_device(model)
        self.fisher = {n: f.to(device) for n, f in self.fisher.items()}
        self.anchor = {n: a.to(device) for n, a in self.anchor.items()}

    def extra_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        logits: torch.Tensor,
        modality: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        if not self.fisher:
            return None
        return _weighted_distance(model, self.anchor, self.fisher, self.weight / 2)

    def after_training(
        self,
        model: nn.Module,
        images: np.ndarray,
        masks: np.ndarray,
        modalities: np.ndarray | None = None,
    ) -> None:
        new = empirical_fisher(
            model, images, masks, self.fisher_samples, self.seed, modalities=modalities
        )
        self.fisher = {
            n: self.decay * self.fisher[n] + f if n in self.fisher else f for n, f in new.items()
        }
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters()}

    def state(self) -> ArrayState:
        return {
            **{f"fisher/{n}": f.cpu().numpy() for n, f in self.fisher.items()},
            **{f"anchor/{n}": a.cpu().numpy() for n, a in self.anchor.items()},
        }


class LwF(ContinualMethod):
    """Distil the received model: ``weight * BCE(logits / T, sigmoid(teacher(x) / T))``.

    The teacher is a frozen copy (eval mode) of the model the site received. In the first
    server round the received model is the untrained one, so there is nothing to keep and
    no teacher.
    """

    def __init__(self, server_round: int, weight: float = 1.0, temperature: float = 2.0) -> None:
        self.server_round = server_round
        self.weight, self.temperature = float(weight), float(temperature)
        self.teacher: nn.Module | None = None

    @classmethod
    def build(
        cls, options: Mapping[str, Any], state: Mapping[str, np.ndarray], seed: int, round_: int
    ) -> LwF:
        return cls(round_, **options)

    def before_training(self, model: nn.Module) -> None:
        if self.server_round > 1:
            self.teacher = copy.deepcopy(model).eval().requires_grad_(False)

    def extra_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        logits: torch.Tensor,
        modality: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        with torch.no_grad():
            taught = self.teacher(x) if modality is None else self.teacher(x, modality)
            target = torch.sigmoid(taught / self.temperature)
        return self.weight * F.binary_cross_entropy_with_logits(logits / self.temperature, target)

    def after_training(
        self,
        model: nn.Module,
        images: np.ndarray,
        masks: np.ndarray,
        modalities: np.ndarray | None = None,
    ) -> None:
        self.teacher = None


class Replay(ContinualMethod):
    """Train on the arrived cases plus a reservoir of ``buffer`` earlier cases of this site.

    The reservoir (Vitter's algorithm R, seeded by the round's ``seed``) then takes in the
    arrived cases, so every case the site has seen is equally likely to be in it.
    """

    def __init__(self, state: Mapping[str, np.ndarray], seed: int, buffer: int = 4) -> None:
        self.capacity, self.seed = buffer, seed
        self.buffer = [int(i) for i in np.asarray(state.get("buffer", np.zeros(0))).ravel()]
        self.seen = int(np.asarray(state.get("seen", 0)))

    @classmethod
    def build(
        cls, options: Mapping[str, Any], state: Mapping[str, np.ndarray], seed: int, round_: int
    ) -> Replay:
        return cls(state, seed, **options)

    def select_cases(self, arrived: Sequence[int]) -> list[int]:
        new = set(arrived)
        chosen = list(arrived) + [i for i in self.buffer if i not in new]
        self.buffer, self.seen = reservoir(
            self.buffer, self.seen, list(arrived), self.capacity, self.seed
        )
        return chosen

    def state(self) -> ArrayState:
        return {"buffer": np.asarray(self.buffer, dtype=np.int64), "seen": np.asarray(self.seen)}


def reservoir(
    buffer: Sequence[int], seen: int, incoming: Sequence[int], capacity: int, seed: int
) -> tuple[list[int], int]:
    """Algorithm R: add ``incoming`` to a reservoir of ``capacity`` that has seen ``seen``
    items; returns the new reservoir and count."""
    rng = np.random.default_rng(seed)
    out = list(buffer)
    for item in incoming:
        if len(out) < capacity:
            out.append(item)
        else:
            j = int(rng.integers(0, seen + 1))
            if j < capacity:
                out[j] = item
        seen += 1
    return out, seen


def empirical_fisher(
    model: nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    samples: int,
    seed: int,
    modalities: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: the mean squared gradient of the segmentation loss over up
    to ``samples`` slices (chosen with ``seed``), one slice at a time, in eval mode; with
    ``modalities`` (N,), each slice's modality goes to the model."""
    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(images))[:samples]
    params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.eval()
    device = model_device(model)
    for i in picked:
        x = torch.tensor(images[i : i + 1], dtype=torch.float32).to(device)
        y = torch.tensor(masks[i : i + 1], dtype=torch.float32).to(device)
        model.zero_grad(set_to_none=True)
        if modalities is None:
            logits = model(x)
        else:
            logits = model(x, torch.as_tensor(modalities[i : i + 1], dtype=torch.long).to(device))
        segmentation_loss(logits, y).backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2 / max(len(picked), 1)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return fisher


def _weighted_distance(
    model: nn.Module,
    anchor: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor] | None,
    scale: float,
) -> torch.Tensor:
    """``scale * sum_n w_n (p_n - anchor_n)^2`` over the parameters that have an anchor."""
    terms = [
        ((p - anchor[n]) ** 2 * (1.0 if weights is None else weights[n])).sum()
        for n, p in model.named_parameters()
        if n in anchor
    ]
    if not terms:
        return torch.zeros((), device=model_device(model))
    return scale * torch.stack(terms).sum()


def _prefixed(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    return {
        k.removeprefix(prefix): torch.from_numpy(np.array(v, dtype=np.float32))
        for k, v in state.items()
        if k.startswith(prefix)
    }


METHODS: Mapping[type, type[ContinualMethod]] = {
    FineTuneOptions: ContinualMethod,
    EWCOptions: EWC,
    LwFOptions: LwF,
    ReplayOptions: Replay,
}
"""Each CL option class of the scenario schema -> the method it configures."""


def build_method(
    options: ContinualOptions, state: Mapping[str, np.ndarray], seed: int, server_round: int
) -> ContinualMethod:
    """The CL method ``options`` names, resumed from the site's kept ``state``; ``seed`` is
    the site's seed for this round."""
    return METHODS[type(options)].build(options.options(), state, seed, server_round)
