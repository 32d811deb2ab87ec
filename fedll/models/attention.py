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

from fedll.models.modality import ModalityBatch
from fedll.models.routing import ACP_STATS, MODES, Routing, RoutingSpec
from fedll.models.temperature import TemperatureSchedule

_STD_EPS = 1e-5  # keeps the std's gradient finite on constant channels


def _quantiles(flat: torch.Tensor, levels: Sequence[float]) -> torch.Tensor:
    """Linear-interpolated quantiles along the last axis: (B, C, N) -> (B, C, len(levels)).

    Uses a sort, not ``torch.quantile``, which refuses inputs above 2**24 elements; the
    positions are Python numbers, so nothing is copied to the device.
    """
    n = flat.shape[-1]
    ordered = flat.sort(dim=-1).values
    values = []
    for q in levels:
        pos = q * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        values.append(ordered[..., lo] + (ordered[..., hi] - ordered[..., lo]) * (pos - lo))
    return torch.stack(values, dim=-1)


def pooled_statistics(
    x: torch.Tensor,
    acp_stats: Sequence[str],
    quantiles: Sequence[float] = RoutingSpec.quantiles,
) -> torch.Tensor:
    """Per-channel spatial statistics of ``x`` (B, C, H, W), concatenated: (B, C * n_features).

    ``"mean"`` is global average pooling, ``"std"`` the population standard deviation,
    ``"max"`` global max pooling, ``"quantiles"`` one feature per entry of ``quantiles``.
    """
    flat = x.flatten(2)
    parts: list[torch.Tensor] = []
    for name in acp_stats:
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
        spec: the routing (default :class:`RoutingSpec`'s): statistics, hidden width,
            temperature schedule, ``top_k``, and ``freeze_routing_after`` (read by
            :func:`fedll.models.inspection.freeze_routing`, not here); its routing must be
            ``"learned"``.

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
        spec: RoutingSpec | None = None,
    ) -> None:
        super().__init__()
        spec = spec or RoutingSpec()
        if spec.routing != "learned":
            raise ValueError(f"routing: the ACP reads the input ('learned'), not {spec.routing!r}")
        if mode not in MODES:
            raise ValueError(f"mode: unknown dynamic mode {mode!r} (known: {MODES})")
        if mode == "grouped" and out_channels is None:
            raise ValueError("out_channels: the grouped ACP needs out_channels")
        if num_kernels < 1:
            raise ValueError(f"num_kernels: must be >= 1, got {num_kernels}")
        if spec.top_k is not None and not 1 <= spec.top_k <= num_kernels:
            raise ValueError(f"top_k: must be in 1..num_kernels={num_kernels}, got {spec.top_k}")
        self.mode = mode
        self.num_kernels = num_kernels
        self.out_channels = out_channels
        self.spec = spec
        per_channel = sum(len(spec.quantiles) if s == "quantiles" else 1 for s in spec.acp_stats)
        hidden = max(int(in_channels * spec.hidden_ratio), spec.min_hidden)
        outputs = num_kernels * (out_channels if mode == "grouped" else 1)
        self.fc1 = nn.Linear(in_channels * per_channel, hidden)
        self.fc2 = nn.Linear(hidden, outputs)
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.long))

    def forward(
        self, x: torch.Tensor, modality: torch.Tensor | ModalityBatch | None = None
    ) -> Routing:
        statistics = pooled_statistics(x, self.spec.acp_stats, self.spec.quantiles)
        z = self.fc2(F.relu(self.fc1(statistics)))
        if self.mode == "grouped":
            z = z.view(x.shape[0], self.out_channels, self.num_kernels)
        probs = torch.softmax(z / self._temperature_for(z), dim=-1)
        top_k = self.spec.top_k
        if top_k is None or top_k >= self.num_kernels:
            return Routing(probs, probs)
        return Routing(straight_through_top_k(probs, top_k), probs)

    def extra_repr(self) -> str:
        spec = self.spec
        return (
            f"mode={self.mode}, num_kernels={self.num_kernels}, stats={spec.acp_stats}, "
            f"tau={spec.temperature_start}->{spec.temperature_end} over {spec.anneal_steps} "
            f"steps, top_k={spec.top_k}"
        )
