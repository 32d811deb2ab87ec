"""Tiny synthetic segmentation batches for the model tests."""

from __future__ import annotations

import pytest
import torch


def make_blobs(batch: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright discs on noise: images (B, 1, size, size) float32, masks (B, 1, size, size) 0/1."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.randint(size // 4, 3 * size // 4, (batch, 2), generator=gen)
    radii = torch.randint(size // 8 + 1, size // 4 + 1, (batch,), generator=gen)
    dist2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (
        xx[None] - centres[:, 1, None, None]
    ) ** 2
    masks = (dist2 <= radii[:, None, None] ** 2).float()[:, None]
    images = 2.0 * masks + 0.5 * torch.randn(batch, 1, size, size, generator=gen)
    return images, masks


@pytest.fixture
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    return make_blobs(batch=8, size=24, seed=0)
