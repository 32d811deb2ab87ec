"""Attention-coefficient prediction (ACP) for dynamic convolution, and its temperature schedule.

The ACP of Chen et al., "Dynamic Convolution: Attention over Convolution Kernels" (CVPR 2020):
pooled input statistics -> FC -> ReLU -> FC -> softmax(z / tau). It predicts, per sample, either
K coefficients over a bank of K kernels (``mode="bank"``, shape (B, K)) or, for the poster's
DyNet-style variant, G coefficients per output channel (``mode="grouped"``, shape (B, C_out, G),
softmax over G). The coefficients are computed here and handed to
:class:`fedll.models.dynamic_conv.DynamicConv2d`, which only mixes kernels (as timm's
``CondConv2d`` receives its routing weights from the caller).

The temperature anneals linearly from ``temperature_start`` to ``temperature_end`` over
``anneal_steps`` optimiser steps and then stays fixed. The step count is a buffer
(``anneal_step``), so the schedule is saved and resumed with the state dict; it is advanced
explicitly, once per optimiser step, by :func:`fedll.models.registry.advance_schedule`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fedll.models.unet import ModalityBatch, TakesModality

ACP_STATS: tuple[str, ...] = ("mean", "std", "max", "quantiles")
"""The pooled per-channel statistics the ACP can read, concatenated in the order given."""

MODES: tuple[str, ...] = ("bank", "grouped")

ROUTINGS: tuple[str, ...] = ("learned", "modality-soft", "modality-hard")
"""How a dynamic layer chooses its kernel mixture: ``learned`` from the input (the ACP),
``modality-soft`` / ``modality-hard`` from the case's known modality
(:class:`ModalityCoefficients`)."""

_STD_EPS = 1e-5  # keeps the std's gradient finite on constant channels


def temperature_at(step: int, start: float, end: float, anneal_steps: int) -> float:
    """Softmax temperature after ``step`` optimiser steps: linear from ``start`` to ``end``.

    Reaches ``end`` at ``step == anneal_steps`` and stays there; ``anneal_steps == 0`` means
    ``end`` from the first step (Chen et al. anneal 30 -> 1 over the first epochs).
    """
    if anneal_steps <= 0 or step >= anneal_steps:
        return float(end)
    return float(start + (end - start) * (max(step, 0) / anneal_steps))


def temperature_tensor(
    step: torch.Tensor, start: float, end: float, anneal_steps: int
) -> torch.Tensor:
    """:func:`temperature_at` on a 0-d floating ``step`` tensor, so no value leaves the device."""
    if anneal_steps <= 0:
        return torch.full_like(step, end)
    return start + (end - start) * (step / anneal_steps).clamp(0.0, 1.0)


def _quantiles(flat: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """Linear-interpolated quantiles along the last axis: (B, C, N) -> (B, C, len(qs)).

    Uses a sort, not ``torch.quantile``, which refuses inputs above 2**24 elements; the
    positions are Python numbers, so nothing is copied to the device.
    """
    n = flat.shape[-1]
    ordered = flat.sort(dim=-1).values
    values = []
    for q in qs:
        pos = q * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        values.append(ordered[..., lo] + (ordered[..., hi] - ordered[..., lo]) * (pos - lo))
    return torch.stack(values, dim=-1)


def pooled_statistics(
    x: torch.Tensor, stats: Sequence[str], quantiles: Sequence[float] = (0.1, 0.5, 0.9)
) -> torch.Tensor:
    """Per-channel spatial statistics of ``x`` (B, C, H, W), concatenated: (B, C * n_features).

    ``"mean"`` is global average pooling, ``"std"`` the population standard deviation,
    ``"max"`` global max pooling, ``"quantiles"`` one feature per entry of ``quantiles``.
    """
    flat = x.flatten(2)
    parts: list[torch.Tensor] = []
    for name in stats:
        if name == "mean":
            # sum * (1/N), not mean: its backward broadcasts instead of materialising grad / N
            parts.append(flat.sum(-1) * (1.0 / flat.shape[-1]))
        elif name == "std":
            parts.append(torch.sqrt(flat.var(-1, correction=0) + _STD_EPS))
        elif name == "max":
            parts.append(flat.amax(-1))
        elif name == "quantiles":
            parts.append(_quantiles(flat, quantiles).flatten(1))
        else:
            raise ValueError(f"acp_stats: unknown statistic {name!r} (known: {ACP_STATS})")
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def straight_through_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Hard top-k routing over the last axis with a straight-through gradient.

    The value is the top-``k`` entries of ``probs`` renormalised to sum to 1 (the rest exactly
    0), so a kernel outside the top-k contributes nothing to the forward and its weights get
    exactly zero gradient. The gradient with respect to ``probs`` (hence to the ACP) is the
    identity, as if the soft ``probs`` had been used: ``hard + probs - probs.detach()``.
    """
    idx = probs.topk(k, dim=-1).indices
    mask = torch.zeros_like(probs).scatter_(-1, idx, 1.0)
    kept = probs.detach() * mask
    hard = kept / kept.sum(-1, keepdim=True)
    return hard + probs - probs.detach()


class Routing(NamedTuple):
    """What the ACP predicts for a batch.

    weights: the coefficients that mix the kernels, (B, K) or (B, C_out, G); equal to ``probs``
        unless hard top-k routing is on.
    probs: the soft coefficients softmax(z / tau), same shape, for routing regularisers.
    """

    weights: torch.Tensor
    probs: torch.Tensor


@dataclass(frozen=True)
class RoutingLossWeights:
    """Weights of the routing regulariser (0 switches a term off).

    confidence: mean per-sample entropy of the coefficients (low = confident routing).
    balance: KL divergence of the batch-mean coefficients from uniform (low = all kernels used).
    """

    confidence: float = 0.0
    balance: float = 0.0

    @property
    def active(self) -> bool:
        return self.confidence != 0.0 or self.balance != 0.0


def routing_regulariser(probs: torch.Tensor, weights: RoutingLossWeights) -> torch.Tensor:
    """``confidence * H_sample + balance * KL(mean_B probs || uniform)`` in nats, a scalar.

    ``probs`` is (B, K) or (B, C_out, G), normalised over the last axis; for the grouped shape
    both terms are averaged over output channels.
    """
    k = probs.shape[-1]
    log_p = probs.clamp_min(1e-12).log()
    confidence = -(probs * log_p).sum(-1).mean()
    mean = probs.mean(0)
    balance = (mean * (mean.clamp_min(1e-12).log() + math.log(k))).sum(-1).mean()
    return weights.confidence * confidence + weights.balance * balance


class TemperatureSchedule:
    """The annealed softmax temperature of a router: ``temperature_start``,
    ``temperature_end``, ``anneal_steps`` (attributes) and the ``anneal_step`` buffer of the
    module it is mixed into (see :func:`temperature_at`)."""

    temperature_start: float
    temperature_end: float
    anneal_steps: int
    anneal_step: torch.Tensor

    @property
    def temperature(self) -> float:
        """The current softmax temperature tau."""
        return temperature_at(
            int(self.anneal_step), self.temperature_start, self.temperature_end, self.anneal_steps
        )

    def _temperature_for(self, like: torch.Tensor) -> float | torch.Tensor:
        """:attr:`temperature`: a float on CPU, else a 0-d tensor (no host sync per layer)."""
        if self.anneal_step.device.type == "cpu":
            return self.temperature
        return temperature_tensor(
            self.anneal_step.to(like.dtype),
            self.temperature_start,
            self.temperature_end,
            self.anneal_steps,
        )

    def advance(self, steps: int = 1) -> None:
        """Advance the annealing schedule by ``steps`` optimiser steps."""
        self.anneal_step.add_(steps)


class AttentionCoefficients(TemperatureSchedule, nn.Module):
    """The ACP: pooled statistics -> FC -> ReLU -> FC -> softmax(z / tau) (Chen et al. 2020).

    Args:
        in_channels: C_in of the input the coefficients are computed from.
        num_kernels: K, the kernels in the bank (``mode="bank"``) or per output channel
            (``mode="grouped"``, G).
        out_channels: C_out, needed for ``mode="grouped"`` (one coefficient per fixed kernel).
        mode: ``"bank"`` -> (B, K); ``"grouped"`` -> (B, C_out, G), softmax over G.
        stats: pooled statistics, see :func:`pooled_statistics`.
        hidden_ratio, min_hidden: hidden width ``max(int(C_in * hidden_ratio), min_hidden)``.
        temperature_start, temperature_end, anneal_steps: see :func:`temperature_at`;
            ``temperature_end < 1`` sharpens the routing.
        top_k: keep only the k largest coefficients, see :func:`straight_through_top_k`.
        quantiles: the quantile levels read by the ``"quantiles"`` statistic.
        freeze_after: the federated round after which the routing parameters stop training
            (None: never); read by :func:`fedll.models.inspection.freeze_routing`, not here.

    ``forward(x, modality=None)``: x (B, C_in, H, W) -> :class:`Routing`; ``modality`` is
    accepted and ignored (the ACP reads the input).
    """

    def __init__(
        self,
        in_channels: int,
        num_kernels: int = 4,
        *,
        out_channels: int | None = None,
        mode: str = "bank",
        stats: Sequence[str] = ("mean",),
        hidden_ratio: float = 0.25,
        min_hidden: int = 4,
        temperature_start: float = 30.0,
        temperature_end: float = 1.0,
        anneal_steps: int = 100,
        top_k: int | None = None,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        freeze_after: int | None = None,
    ) -> None:
        super().__init__()
        if freeze_after is not None and freeze_after < 0:
            raise ValueError(f"freeze_routing_after: must be >= 0, got {freeze_after}")
        if mode not in MODES:
            raise ValueError(f"mode: unknown dynamic mode {mode!r} (known: {MODES})")
        if mode == "grouped" and out_channels is None:
            raise ValueError("out_channels: the grouped ACP needs out_channels")
        unknown = [s for s in stats if s not in ACP_STATS]
        if not stats or unknown:
            raise ValueError(
                f"acp_stats: {list(stats)!r} must be a non-empty subset of {ACP_STATS}"
            )
        if num_kernels < 1:
            raise ValueError(f"num_kernels: must be >= 1, got {num_kernels}")
        if top_k is not None and not 1 <= top_k <= num_kernels:
            raise ValueError(f"top_k: must be in 1..num_kernels={num_kernels}, got {top_k}")
        if temperature_start <= 0 or temperature_end <= 0:
            raise ValueError(
                f"temperature_start/end: must be > 0, got {temperature_start}, {temperature_end}"
            )
        if anneal_steps < 0:
            raise ValueError(f"anneal_steps: must be >= 0, got {anneal_steps}")
        if not quantiles or not all(0.0 <= q <= 1.0 for q in quantiles):
            raise ValueError(f"quantiles: must be levels in [0, 1], got {list(quantiles)!r}")
        if hidden_ratio <= 0 or min_hidden < 1:
            raise ValueError(
                f"hidden_ratio/min_hidden: must be > 0 and >= 1, got {hidden_ratio}, {min_hidden}"
            )
        self.mode = mode
        self.num_kernels = num_kernels
        self.out_channels = out_channels
        self.stats = tuple(stats)
        self.quantiles = tuple(float(q) for q in quantiles)
        self.temperature_start = float(temperature_start)
        self.temperature_end = float(temperature_end)
        self.anneal_steps = int(anneal_steps)
        self.top_k = top_k
        self.freeze_after = freeze_after
        per_channel = sum(len(self.quantiles) if s == "quantiles" else 1 for s in self.stats)
        hidden = max(int(in_channels * hidden_ratio), min_hidden)
        outputs = num_kernels * (out_channels if mode == "grouped" else 1)
        self.fc1 = nn.Linear(in_channels * per_channel, hidden)
        self.fc2 = nn.Linear(hidden, outputs)
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.long))

    def forward(
        self, x: torch.Tensor, modality: torch.Tensor | ModalityBatch | None = None
    ) -> Routing:
        z = self.fc2(F.relu(self.fc1(pooled_statistics(x, self.stats, self.quantiles))))
        if self.mode == "grouped":
            z = z.view(x.shape[0], self.out_channels, self.num_kernels)
        probs = torch.softmax(z / self._temperature_for(z), dim=-1)
        if self.top_k is None or self.top_k >= self.num_kernels:
            return Routing(probs, probs)
        return Routing(straight_through_top_k(probs, self.top_k), probs)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode}, num_kernels={self.num_kernels}, stats={self.stats}, "
            f"tau={self.temperature_start}->{self.temperature_end} over {self.anneal_steps} steps, "
            f"top_k={self.top_k}"
        )


class ModalityCoefficients(TemperatureSchedule, nn.Module):
    """Routing by the case's known modality instead of by the input (an oracle router).

    ``routing="modality-soft"``: a learned logit per modality and kernel, ``logits`` of shape
    (M, K) (``mode="bank"``) or (M, C_out, G) (``mode="grouped"``), zero at the start (every
    kernel equal); sample b gets ``softmax(logits[modality[b]] / tau)`` over the last axis, with
    the same temperature schedule as :class:`AttentionCoefficients`.
    ``routing="modality-hard"``: no parameters; the K kernels are split into M consecutive,
    equal sets and modality m mixes set m with equal weights (one-hot when K == M), so a
    modality's kernels get no gradient from the other's slices. K must be a multiple of M.

    M is ``num_modalities`` (``len(fedll.data.MODALITIES)`` in the U-Net builder).
    ``freeze_after`` see :class:`AttentionCoefficients`.

    ``forward(x, modality)``: x (B, C_in, H, W) (only its batch size and device are read),
    modality (B,) int64 indices into the modalities -> :class:`Routing`, weights (B, K) or
    (B, C_out, G).
    """

    def __init__(
        self,
        num_kernels: int = 4,
        *,
        num_modalities: int = 2,
        routing: str = "modality-soft",
        out_channels: int | None = None,
        mode: str = "bank",
        temperature_start: float = 30.0,
        temperature_end: float = 1.0,
        anneal_steps: int = 100,
        freeze_after: int | None = None,
    ) -> None:
        super().__init__()
        if routing not in ROUTINGS[1:]:
            raise ValueError(f"routing: {routing!r} is not one of {ROUTINGS[1:]}")
        if freeze_after is not None and freeze_after < 0:
            raise ValueError(f"freeze_routing_after: must be >= 0, got {freeze_after}")
        if mode not in MODES:
            raise ValueError(f"mode: unknown dynamic mode {mode!r} (known: {MODES})")
        if mode == "grouped" and out_channels is None:
            raise ValueError("out_channels: the grouped mode needs out_channels")
        if num_kernels < 1 or num_modalities < 1:
            raise ValueError(f"num_kernels: must be >= 1, got {num_kernels}")
        if routing == "modality-hard" and num_kernels % num_modalities:
            raise ValueError(
                f"num_kernels: modality-hard routing splits the kernels into one equal set per "
                f"modality, so it must be a multiple of {num_modalities}, got {num_kernels}"
            )
        if temperature_start <= 0 or temperature_end <= 0:
            raise ValueError(
                f"temperature_start/end: must be > 0, got {temperature_start}, {temperature_end}"
            )
        if anneal_steps < 0:
            raise ValueError(f"anneal_steps: must be >= 0, got {anneal_steps}")
        self.routing = routing
        self.mode = mode
        self.num_kernels = num_kernels
        self.num_modalities = num_modalities
        self.out_channels = out_channels
        self.temperature_start = float(temperature_start)
        self.temperature_end = float(temperature_end)
        self.anneal_steps = int(anneal_steps)
        self.freeze_after = freeze_after
        shape = (num_modalities, *((out_channels,) if mode == "grouped" else ()), num_kernels)
        self.logits = nn.Parameter(torch.zeros(shape)) if routing == "modality-soft" else None
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.long))

    def hard_weights(self, like: torch.Tensor) -> torch.Tensor:
        """(M, K): row m is 1 / (K / M) on modality m's kernel set, 0 elsewhere."""
        per = self.num_kernels // self.num_modalities
        owner = torch.arange(self.num_kernels, device=like.device) // per
        rows = torch.arange(self.num_modalities, device=like.device)[:, None]
        return (owner[None] == rows).to(like.dtype) / per

    def forward(
        self, x: torch.Tensor, modality: torch.Tensor | ModalityBatch | None = None
    ) -> Routing:
        modality = TakesModality.checked_modality(
            x, modality, f"routes by the case's modality ({self.routing})"
        ).index.to(x.device, torch.long)
        if self.logits is None:
            table = self.hard_weights(x)
            if self.mode == "grouped":
                table = table[:, None, :].expand(-1, self.out_channels, -1)
            weights = table[modality]
            return Routing(weights, weights)
        probs = torch.softmax(self.logits[modality] / self._temperature_for(self.logits), dim=-1)
        return Routing(probs, probs)

    def extra_repr(self) -> str:
        return (
            f"routing={self.routing}, mode={self.mode}, num_kernels={self.num_kernels}, "
            f"num_modalities={self.num_modalities}, "
            f"tau={self.temperature_start}->{self.temperature_end} over {self.anneal_steps} steps"
        )
