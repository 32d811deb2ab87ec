"""The glioma of a phantom: a lobulated core (necrotic with an enhancing rim, or solid),
oedema that spreads along white matter and spares cortex and CSF, and the mass effect that
pushes the anatomy around it (DATA.md, "Tumour shapes that looked right")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from fedll.data.fields import ramp, smooth_field
from fedll.data.scanner import Tissue

Lobes = tuple[np.ndarray, np.ndarray, np.ndarray]  # directions (K, 3), amplitudes (K,), kappas (K,)
ROUGHNESS = 0.12  # relative amplitude of the smooth boundary irregularity
_WHITE_REACH = (0.6, 1.1)  # oedema reach factor in grey (0) ... white (1) matter


@dataclass(frozen=True, eq=False)
class Tumour:
    radius: float  # mm, mean core radius
    radii: np.ndarray  # (3,) mm, anisotropic semi-axes of the core
    rotation: np.ndarray  # (3, 3)
    necrosis: float | None  # necrotic core as a fraction of the core radius; None: low grade
    oedema: float  # oedema reach as a multiple of the core radius
    core_lobes: Lobes
    oedema_lobes: Lobes
    push: float  # mass effect: compression at the centre, in [0, 1)

    @property
    def extent(self) -> float:
        """mm from the centre beyond which no tumour tissue reaches."""
        widest = float(self.radii.max()) * (1 + ROUGHNESS)
        core = widest * _lobe_max(self.core_lobes)
        return max(core, widest * self.oedema * _lobe_max(self.oedema_lobes) * _WHITE_REACH[1])

    @property
    def push_sigma(self) -> float:
        """mm, width of the mass effect's Gaussian fall-off."""
        return 1.2 * self.radius


def _lobes(rng: np.random.Generator) -> Lobes:
    k = int(rng.integers(3, 7))
    v = rng.standard_normal((k, 3))
    return (
        v / np.linalg.norm(v, axis=1, keepdims=True),
        rng.uniform(0.1, 0.35, k),
        rng.uniform(3.0, 10.0, k),
    )


def _lobe_mean(lobes: Lobes) -> float:
    """Mean over directions of sum_k a_k exp(kappa_k (cos - 1))."""
    _, amps, kappas = lobes
    terms = (a * (1 - math.exp(-2 * k)) / (2 * k) for a, k in zip(amps, kappas, strict=True))
    return float(sum(terms))


def _lobe_max(lobes: Lobes) -> float:
    """Largest radial scale of ``_lobe`` over 400 near-uniform directions, plus 10%."""
    k = np.arange(400) + 0.5
    polar, azimuth = np.arccos(1 - 2 * k / 400), np.pi * (1 + 5**0.5) * k
    sin = np.sin(polar)
    unit = [sin * np.cos(azimuth), sin * np.sin(azimuth), np.cos(polar)]
    return 1.1 * float(_lobe(unit, lobes).max())


def sample_tumour(rng: np.random.Generator) -> Tumour:
    radius = rng.uniform(6.0, 20.0)
    aspect = rng.uniform(0.7, 1.3, size=3)
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    high_grade = rng.random() < 0.75
    rim = rng.uniform(2.5, 6.0)  # mm of enhancing rim around the necrosis
    return Tumour(
        radius=radius,
        radii=radius * aspect / np.prod(aspect) ** (1 / 3),
        rotation=q * np.sign(np.diag(r))[None, :],
        necrosis=max(0.2, 1.0 - rim / radius) if high_grade else None,
        oedema=rng.uniform(1.4, 2.8),
        core_lobes=_lobes(rng),
        oedema_lobes=_lobes(rng),
        push=rng.uniform(0.2, 0.45),
    )


def tumour_box(
    centre: tuple[int, int, int], extent: float, spacing: float, shape: tuple[int, int, int]
) -> tuple[slice, slice, slice]:
    h = math.ceil(extent / spacing) + 1
    return tuple(
        slice(max(c - h, 0), min(c + h + 1, n)) for c, n in zip(centre, shape, strict=True)
    )


def box_mm_offsets(
    axes: list[np.ndarray], box: tuple[slice, slice, slice], centre: tuple[int, int, int]
) -> list[np.ndarray]:
    """1-D float32 mm offsets from the centre voxel along each axis of ``box``."""
    return [(axes[i][box[i]] - axes[i][centre[i]]).astype(np.float32) for i in range(3)]


def mass_effect(
    coords: np.ndarray,
    box: tuple[slice, slice, slice],
    box_mm: list[np.ndarray],
    matrix: np.ndarray,
    tumour: Tumour,
) -> None:
    """Push anatomy away from the centre: output point p samples the template at
    c + (p - c)(1 - k exp(-|p - c|^2 / 2 s^2)), monotone in |p - c| for k < 1."""
    x, y, z = box_mm[0][:, None, None], box_mm[1][None, :, None], box_mm[2][None, None, :]
    sigma = tumour.push_sigma
    shrink = -tumour.push * np.exp(-(x * x + y * y + z * z) / (2 * sigma * sigma))
    for i in range(3):
        coords[(i, *box)] += shrink * (matrix[i, 0] * x + matrix[i, 1] * y + matrix[i, 2] * z)


def _lobe(unit: list[np.ndarray], lobes: Lobes) -> np.ndarray:
    """Radial scale of a lobulated surface along unit directions (3 arrays), mean 1."""
    dirs, amps, kappas = lobes
    scale = np.ones_like(unit[0])
    for d, a, k in zip(dirs.astype(unit[0].dtype), amps, kappas, strict=True):
        cos = d[0] * unit[0] + d[1] * unit[1] + d[2] * unit[2]
        cos -= 1.0
        cos *= k
        scale += a * np.exp(cos, out=cos)
    scale /= 1.0 + _lobe_mean(lobes)
    return scale


def render_tumour(
    fractions: np.ndarray,
    labels: np.ndarray,
    box: tuple[slice, slice, slice],
    box_mm: list[np.ndarray],
    side: np.ndarray,
    tumour: Tumour,
    spacing: float,
    rng: np.random.Generator,
) -> None:
    """Write core / rim / oedema fractions and BraTS labels inside ``box`` (in place).

    ``side`` (box-shaped) is the signed mm from the mid-sagittal plane, positive on the
    tumour's side: oedema crosses the falx only a few mm (as along the corpus callosum)."""
    x, y, z = box_mm[0][:, None, None], box_mm[1][None, :, None], box_mm[2][None, None, :]
    # float32 throughout: numpy scalars (unlike Python floats) would promote to float64.
    rt = (tumour.rotation.T / tumour.radii[:, None]).astype(np.float32)
    q = [rt[i, 0] * x + rt[i, 1] * y + rt[i, 2] * z for i in range(3)]
    r = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    unit = [qi / np.maximum(r, 1e-6) for qi in q]
    bshape = r.shape
    rough = 1.0 + ROUGHNESS * smooth_field(
        rng, bshape, tuple(max(4, round(n * spacing / 8.0) + 3) for n in bshape)
    )
    rho = r / (_lobe(unit, tumour.core_lobes) * rough)
    local = fractions[(slice(None), *box)]
    inside = 1.0 - local[Tissue.AIR] - local[Tissue.BONE] - local[Tissue.FAT]
    core = ramp(rho, 1.0, spacing / tumour.radius) * inside
    # Oedema reaches further along white matter and spares cortex and CSF.
    white = ndi.uniform_filter(local[Tissue.WHITE], 2 * round(4.0 / spacing) + 1)
    lo, hi = _WHITE_REACH
    reach = tumour.oedema * _lobe(unit, tumour.oedema_lobes) * rough * (lo + (hi - lo) * white)
    reach *= np.exp(np.minimum(side, 0.0) / 6.0)
    affinity = np.clip(local[Tissue.WHITE] + 0.4 * local[Tissue.GREY], 0.0, 1.0)
    extent = tumour.oedema * tumour.radius
    oedema = ramp(r / reach, 1.0, spacing / extent) * affinity * (1.0 - core)
    if tumour.necrosis is None:
        parts = {Tissue.NON_ENHANCING: core}
    else:
        necrotic = np.minimum(ramp(rho, tumour.necrosis, spacing / tumour.radius) * inside, core)
        parts = {Tissue.NECROSIS: necrotic, Tissue.ENHANCING: core - necrotic}
    parts[Tissue.OEDEMA] = oedema
    total = core + oedema
    local[: Tissue.OEDEMA] *= 1.0 - total  # normal tissues make room
    for tissue, part in parts.items():
        local[tissue] = part
    codes = {Tissue.NECROSIS: 1, Tissue.NON_ENHANCING: 1, Tissue.OEDEMA: 2, Tissue.ENHANCING: 4}
    order = list(parts)
    winner = np.argmax(np.stack([parts[t] for t in order]), axis=0)
    winner_code = np.asarray([codes[t] for t in order], dtype=np.uint8)[winner]
    labels[box] = np.where(total >= 0.5, winner_code, 0)
