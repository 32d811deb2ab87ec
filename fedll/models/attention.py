"""Attention-coefficient prediction (ACP) for dynamic convolution.

The ACP of Chen et al., "Dynamic Convolution: Attention over Convolution Kernels" (CVPR 2020):
pooled input statistics -> FC -> ReLU -> FC -> softmax(z / tau). It predicts, per sample, either
K coefficients over a bank of K kernels (``mode="bank"``, shape (B, K)) or, for the poster's
DyNet-style variant, G coefficients per output channel (``mode="grouped"``, shape (B, C_out, G),
softmax over G). The coefficients are computed here and handed to
:class:`fedll.models.dynamic_conv.DynamicConv2d`, which only mixes kernels (as timm's
``CondConv2d`` receives its routing weights from the caller). The temperature tau follows
:mod:`~fedll.models.temperature`'s schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedll.models.routing import ACP_STATS, MODES, Routing
from fedll.models.temperature import TemperatureSchedule
from fedll.models.unet import ModalityBatch

_STD_EPS = 1e-5  # keeps the std's gradient finite on constant channels


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
