"""Routing by the case's known modality instead of by the input (an oracle router):
:class:`ModalityCoefficients`, which takes the ACP's place in a dynamic layer."""

from __future__ import annotations

import torch
from torch import nn

from fedll.models.modality import ModalityBatch, TakesModality
from fedll.models.routing import MODES, ROUTINGS, Routing, RoutingSpec
from fedll.models.temperature import TemperatureSchedule


class ModalityCoefficients(TemperatureSchedule, nn.Module):
    """Routing by the case's known modality instead of by the input (an oracle router).

    ``spec.routing="modality-soft"``: a learned logit per modality and kernel, ``logits`` of
    shape (M, K) (``mode="bank"``) or (M, C_out, G) (``mode="grouped"``), zero at the start
    (every kernel equal); sample b gets ``softmax(logits[modality[b]] / tau)`` over the last
    axis, with the spec's temperature schedule, as the ACP's.
    ``spec.routing="modality-hard"``: no parameters; the K kernels are split into M
    consecutive, equal sets and modality m mixes set m with equal weights (one-hot when
    K == M), so a modality's kernels get no gradient from the other's slices. K must be a
    multiple of M.

    M is ``spec.num_modalities``; ``spec.freeze_routing_after`` is read by
    :func:`fedll.models.inspection.freeze_routing`; the spec's ACP fields do not apply.

    ``forward(x, modality)``: x (B, C_in, H, W) (only its batch size and device are read),
    modality (B,) int64 indices into the modalities -> :class:`Routing`, weights (B, K) or
    (B, C_out, G).
    """

    def __init__(
        self,
        num_kernels: int = 4,
        *,
        out_channels: int | None = None,
        mode: str = "bank",
        spec: RoutingSpec,
    ) -> None:
        super().__init__()
        if spec.routing not in ROUTINGS[1:]:
            raise ValueError(f"routing: {spec.routing!r} is not one of {ROUTINGS[1:]}")
        if mode not in MODES:
            raise ValueError(f"mode: unknown dynamic mode {mode!r} (known: {MODES})")
        if mode == "grouped" and out_channels is None:
            raise ValueError("out_channels: the grouped mode needs out_channels")
        if num_kernels < 1:
            raise ValueError(f"num_kernels: must be >= 1, got {num_kernels}")
        modalities = spec.num_modalities
        if spec.routing == "modality-hard" and num_kernels % modalities:
            raise ValueError(
                f"num_kernels: modality-hard routing splits the kernels into one equal set per "
                f"modality, so it must be a multiple of {modalities}, got {num_kernels}"
            )
        self.mode = mode
        self.num_kernels = num_kernels
        self.out_channels = out_channels
        self.spec = spec
        shape = (modalities, *((out_channels,) if mode == "grouped" else ()), num_kernels)
        soft = spec.routing == "modality-soft"
        self.logits = nn.Parameter(torch.zeros(shape)) if soft else None
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.long))

    def hard_weights(self, like: torch.Tensor) -> torch.Tensor:
        """(M, K): row m is 1 / (K / M) on modality m's kernel set, 0 elsewhere."""
        kernels_per_modality = self.num_kernels // self.spec.num_modalities
        kernel_modality = torch.arange(self.num_kernels, device=like.device) // kernels_per_modality
        rows = torch.arange(self.spec.num_modalities, device=like.device)[:, None]
        return (kernel_modality[None] == rows).to(like.dtype) / kernels_per_modality

    def forward(
        self, x: torch.Tensor, modality: torch.Tensor | ModalityBatch | None = None
    ) -> Routing:
        modality = TakesModality.checked_modality(
            x, modality, f"routes by the case's modality ({self.spec.routing})"
        ).index.to(x.device, torch.long)
        if self.logits is None:
            weights_by_modality = self.hard_weights(x)
            if self.mode == "grouped":
                weights_by_modality = weights_by_modality[:, None, :].expand(
                    -1, self.out_channels, -1
                )
            weights = weights_by_modality[modality]
            return Routing(weights, weights)
        probs = torch.softmax(self.logits[modality] / self._temperature_for(self.logits), dim=-1)
        return Routing(probs, probs)

    def extra_repr(self) -> str:
        spec = self.spec
        return (
            f"routing={spec.routing}, mode={self.mode}, num_kernels={self.num_kernels}, "
            f"num_modalities={spec.num_modalities}, "
            f"tau={spec.temperature_start}->{spec.temperature_end} over {spec.anneal_steps} steps"
        )
