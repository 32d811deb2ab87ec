"""Routing by the case's known modality instead of by the input (an oracle router):
:class:`ModalityCoefficients`, which takes the ACP's place in a dynamic layer."""

from __future__ import annotations

import torch
from torch import nn

from fedll.models.routing import MODES, ROUTINGS, Routing
from fedll.models.temperature import TemperatureSchedule
from fedll.models.unet import ModalityBatch, TakesModality


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
