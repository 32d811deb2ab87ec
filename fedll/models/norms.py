"""The normalisation layers of a U-Net: one of :data:`NORMS` (:func:`make_norm`), or one such
layer per modality (:class:`ModalityNorm`), as a :class:`NormSpec` makes them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedll.models.modality import ModalityBatch, TakesModality

NORMS: tuple[str, ...] = ("batch", "instance", "group", "none")


def make_norm(norm: str, channels: int) -> nn.Module:
    """A normalisation layer over ``channels``: batch, instance (affine), group or none.

    Group norm uses the largest divisor of ``channels`` that is at most 8 as its group count.
    """
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "group":
        groups = max(g for g in range(1, min(8, channels) + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm: unknown normalisation {norm!r} (known: {NORMS})")


class ModalityNorm(TakesModality, nn.Module):
    """One normalisation layer per modality (``norms[m]``, each as :func:`make_norm` makes
    it): sample b is normalised by ``norms[modality[b]]``, so one modality's batches never move
    another's statistics or affine parameters. A batch of one modality goes through its layer
    whole (bit-identical to that layer alone); a mixed batch is split by modality.

    ``forward(x, modality)``: (B, C, H, W), (B,) int64 -> (B, C, H, W).
    """

    def __init__(self, norm: str, channels: int, num_modalities: int) -> None:
        super().__init__()
        if num_modalities < 1:
            raise ValueError(f"num_modalities: must be >= 1, got {num_modalities}")
        self.norms = nn.ModuleList(make_norm(norm, channels) for _ in range(num_modalities))

    def forward(
        self, x: torch.Tensor, modality: torch.Tensor | ModalityBatch | None = None
    ) -> torch.Tensor:
        batch = self.checked_modality(
            x, modality, "normalises by the case's modality (norm_by_modality)"
        )
        if batch.index.is_meta:  # a footprint measured on the meta device: shapes, no values
            return self.norms[0](x)
        present = batch.present
        if not all(0 <= m < len(self.norms) for m in present):
            raise ValueError(f"modality: indices {list(present)} outside 0..{len(self.norms) - 1}")
        if len(present) == 1:
            return self.norms[present[0]](x)
        out = torch.empty_like(x)
        for m in present:
            index = batch.rows[m]
            out = out.index_copy(0, index, self.norms[m](x.index_select(0, index)))
        return out


@dataclass(frozen=True)
class NormSpec:
    """How a U-Net's normalisation layers are made: ``kind`` (one of :data:`NORMS`, as
    :func:`make_norm` makes it) and, with ``modalities``, one such layer per modality
    (:class:`ModalityNorm`)."""

    kind: str
    modalities: int | None = None

    def layer(self, channels: int) -> nn.Module:
        if self.modalities is None:
            return make_norm(self.kind, channels)
        return ModalityNorm(self.kind, channels, self.modalities)

    @property
    def conv_bias(self) -> bool:
        """Whether the convolutions before these layers take a bias: only without a
        normalisation (a bias before one is redundant)."""
        return self.kind == "none"
