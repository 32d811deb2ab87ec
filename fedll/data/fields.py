"""Smooth random fields for the phantom: elastic displacements, boundary roughness, the
receive coil's bias field, and partial-volume ramps."""

from __future__ import annotations

import numpy as np


def _bspline_matrix(n_out: int, n_ctrl: int) -> np.ndarray:
    """Cubic B-spline weights (n_out, n_ctrl) spreading n_ctrl control points over n_out samples."""
    t = 1.0 + (n_ctrl - 3) * np.arange(n_out) / max(n_out - 1, 1)
    d = np.abs(t[:, None] - np.arange(n_ctrl)[None, :])
    w = np.where(d < 1, 2 / 3 - d**2 + d**3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))
    return w.astype(np.float32)


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], ctrl: tuple[int, ...]
) -> np.ndarray:
    """Smooth random field (X, Y, Z) float32 within [-1, 1]: Gaussian control points ``ctrl``
    scaled to max |c| = 1, interpolated by separable cubic B-spline matrices (a few matmuls).
    B-spline weights are non-negative and sum to 1, so |f| <= max |c| = 1."""
    c = rng.standard_normal(ctrl)
    c = (c / np.abs(c).max()).astype(np.float32)
    wx, wy, wz = (_bspline_matrix(n, m) for n, m in zip(shape, ctrl, strict=True))
    return np.einsum("yj,xjk->xyk", wy, np.einsum("xi,ijk->xjk", wx, c)) @ wz.T


def bias_field(
    rng: np.random.Generator, shape: tuple[int, int, int], amplitude: float
) -> np.ndarray:
    """Smooth multiplicative coil sensitivity (X, Y, Z) float32 within 1 +- amplitude."""
    field = smooth_field(rng, shape, (4, 4, 4))
    field *= amplitude
    field += 1.0
    return field


def ramp(distance: np.ndarray, edge: float, width: float) -> np.ndarray:
    """Fraction of a voxel (width mm) lying on the inner side of ``distance == edge``."""
    return np.clip(0.5 + (edge - distance) / width, 0.0, 1.0)
