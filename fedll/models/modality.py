"""Each sample's modality, passed through a U-Net to the layers that use it.

A model that routes or normalises by the case's known modality is called with ``modality``
(B,) int64, indices into :data:`fedll.data.MODALITIES`; :class:`~fedll.models.unet.UNet` looks
it up once per forward (:class:`ModalityBatch`) and hands it to every layer marked
:class:`TakesModality`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModalityBatch:
    """Each sample's modality, looked up once per forward: ``index`` (B,) int64 on the
    model's device, the modalities ``present`` in the batch (in ascending order) and, for a
    batch of several, ``rows[m]``, the indices of modality m's samples. The U-Net
    (:class:`~fedll.models.unet.UNet`) makes one from the ``modality`` it is given and passes
    it to every layer that takes one, so that finding the modalities present (which reads the
    tensor on the host, a device synchronisation on a GPU) happens once per forward, not once
    per layer."""

    index: torch.Tensor
    present: tuple[int, ...]
    rows: dict[int, torch.Tensor]

    @classmethod
    def of(cls, modality: torch.Tensor, device: torch.device) -> ModalityBatch:
        """The batch of ``modality`` (B,) int64, its index moved to ``device``."""
        if modality.is_meta:  # a footprint measured on the meta device: shapes, no values
            return cls(modality, (), {})
        present = tuple(int(m) for m in torch.unique(modality).tolist())  # the one host read
        index = modality.to(device)
        if len(present) == 1:  # the whole batch goes through one layer: no rows to pick
            return cls(index, present, {})
        return cls(index, present, {m: (index == m).nonzero(as_tuple=True)[0] for m in present})

    @property
    def shape(self) -> torch.Size:
        return self.index.shape


class TakesModality:
    """Marks a layer (a convolution, a normalisation) whose forward takes ``modality`` (B,)
    int64, the index of each sample's modality (:data:`fedll.data.MODALITIES`), or the
    :class:`ModalityBatch` of it, as a second argument: :class:`~fedll.models.unet.UNet`
    passes the modality it is given to these, and only to these."""

    @staticmethod
    def checked_modality(
        x: torch.Tensor, modality: torch.Tensor | ModalityBatch | None, uses: str
    ) -> ModalityBatch:
        """The :class:`ModalityBatch` of ``modality``, or ValueError when a layer that
        ``uses`` it (e.g. "routes by the case's modality") was given none, or not one index
        per sample of ``x``."""
        if modality is None:
            raise ValueError(
                f"modality: this layer {uses}; call the model with modality=(B,) indices into "
                "fedll.data.MODALITIES"
            )
        if modality.shape != (x.shape[0],):
            raise ValueError(
                f"modality: expected shape ({x.shape[0]},), got {tuple(modality.shape)}"
            )
        if isinstance(modality, ModalityBatch):
            return modality
        return ModalityBatch.of(modality, x.device)
