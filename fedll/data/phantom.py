"""Synthetic glioma heads: deformed MNI152 anatomy with a glioma, as tissue fractions.

Why MNI152 templates rather than geometric shapes: a FLAIR-trained model fails on T2 because
T2 makes CSF (ventricles, sulci) as bright as tumour. That failure needs real anatomy: ventricles
of the right shape, sulcal CSF between gyri, a grey-matter ribbon, white matter for oedema to
follow. nilearn ships the MNI152 2009 grey- and white-matter probability maps and brain mask in
its wheel (they load offline), so every phantom starts from them (CSF = brain - GM - WM, which
includes the ventricles), adds a skull and scalp shell around a smoothed brain hull, and varies
per patient with a scaling/rotation/shift plus a smooth elastic deformation (one
``map_coordinates`` pass per map). The maps are probabilities, so the tissue fractions carry
partial volume; signals are mixed per voxel from fractions, never from hard labels.

Pipeline (pure functions; randomness only through the ``numpy.random.Generator`` passed in):
``load_atlas`` / ``make_atlas`` (once per cohort) -> ``synthesize_phantom`` (tissue fractions
and BraTS labels) -> ``fedll.data.scanner.acquire`` per modality; ``synthesize_case`` chains
them for one patient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from fedll.data.fields import bias_field, ramp, smooth_field
from fedll.data.scanner import ScannerProfile, Tissue, acquire
from fedll.data.tumour import (
    box_mm_offsets,
    mass_effect,
    render_tumour,
    sample_tumour,
    tumour_box,
)

DEFAULT_SHAPE: tuple[int, int, int] = (96, 112, 88)
# Field of view that holds any (scaled) head; spacing = max(FOV / shape), isotropic.
FIELD_OF_VIEW_MM: tuple[float, float, float] = (192.0, 224.0, 176.0)


@dataclass(frozen=True, eq=False)
class Atlas:
    """MNI152 2009 maps on a padded 2-mm grid, prepared once per cohort.

    Arrays are float32 (I, J, K) in template voxels; ``hull`` is the signed distance (mm) to a
    smoothed brain hull (negative inside) from which CSF rim, skull and scalp are drawn;
    ``candidates`` marks deep supratentorial white matter where a glioma may be centred.
    """

    grey: np.ndarray
    white: np.ndarray
    hull: np.ndarray
    candidates: np.ndarray  # bool (I, J, K)
    affine: np.ndarray  # (4, 4) template voxel -> MNI mm
    spacing: float  # mm
    centre: tuple[float, float]  # template voxel (i, j) of the head centre
    top: float  # template voxel k of the top of the scalp


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic head: tissue fractions (T, X, Y, Z) float32 summing to 1 per voxel,
    BraTS labels (X, Y, Z) uint8 in {0, 1, 2, 4}, isotropic spacing (mm) and RAS affine."""

    fractions: np.ndarray
    labels: np.ndarray
    spacing: float
    affine: np.ndarray


def load_atlas() -> Atlas:
    """Load nilearn's bundled MNI152 2009 templates (offline) and prepare them on a 2-mm grid.

    The 1-mm maps are averaged over 2 x 2 x 2 blocks (exact partial volumes, and ~6x faster
    than nilearn's ``resolution=2``, which resamples each map on every call)."""
    from nilearn import datasets  # slow import, needed only here

    images = [
        f(resolution=1)
        for f in (
            datasets.load_mni152_gm_template,
            datasets.load_mni152_wm_template,
            datasets.load_mni152_brain_mask,
        )
    ]
    grey, white, brain = (_halve(np.asarray(i.dataobj, dtype=np.float32)) for i in images)
    affine = images[0].affine @ np.array(
        [[2.0, 0, 0, 0.5], [0, 2.0, 0, 0.5], [0, 0, 2.0, 0.5], [0, 0, 0, 1]]
    )
    return make_atlas(grey, white, brain >= 0.5, affine)


def _halve(volume: np.ndarray) -> np.ndarray:
    """Mean over 2 x 2 x 2 blocks of (I, J, K), zero-padding odd sizes: (ceil(I/2), ...)."""
    volume = np.pad(volume, [(0, n % 2) for n in volume.shape])
    i, j, k = (n // 2 for n in volume.shape)
    return volume.reshape(i, 2, j, 2, k, 2).mean(axis=(1, 3, 5), dtype=np.float32)


def make_atlas(
    grey: np.ndarray, white: np.ndarray, mask: np.ndarray, affine: np.ndarray, pad: int = 12
) -> Atlas:
    """Pad the template maps (I, J, K), build the hull distance map and tumour candidates."""
    spacing = float(abs(affine[0, 0]))
    padding = [(pad, pad)] * 3
    grey, white = (np.pad(np.clip(m, 0, 1), padding).astype(np.float32) for m in (grey, white))
    mask = np.pad(mask.astype(bool), padding)
    # The hull closes sulci and fissures: the skull's inner table lies on it, CSF fills the gap.
    hull = ndi.binary_fill_holes((ndi.gaussian_filter(mask.astype(np.float32), 2.5) > 0.3) | mask)
    dist = (ndi.distance_transform_edt(~hull) - ndi.distance_transform_edt(hull)) * spacing
    dist = (dist - np.sign(dist) * 0.5 * spacing).astype(np.float32)
    shifted = np.linalg.inv(affine) @ np.array([0.0, 0.0, -10.0, 1.0])  # MNI z = -10 mm
    supratentorial = np.arange(mask.shape[2])[None, None, :] >= shifted[2] + pad
    candidates = (white > 0.6) & (dist < -10.0) & supratentorial
    head = np.argwhere(dist < 14.0)
    lo, hi = head.min(0), head.max(0)
    pad_affine = affine @ _translation(-pad, -pad, -pad)
    return Atlas(
        grey=grey,
        white=white,
        hull=dist,
        candidates=candidates,
        affine=pad_affine,
        spacing=spacing,
        centre=(float(lo[0] + hi[0]) / 2, float(lo[1] + hi[1]) / 2),
        top=float(hi[2]),
    )


def output_grid(atlas: Atlas, shape: tuple[int, int, int]) -> tuple[float, np.ndarray]:
    """Isotropic spacing (mm) and RAS affine (4, 4) of the output grid: same for every patient.

    The grid is centred on the head in x/y; its top lies 10 mm above the scalp."""
    spacing = max(f / n for f, n in zip(FIELD_OF_VIEW_MM, shape, strict=True))
    centre = _grid_centre(atlas, shape, spacing)
    half = (np.asarray(shape, dtype=float) - 1) / 2
    world = atlas.affine @ np.append(centre, 1.0)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = world[:3] - half * spacing
    return spacing, affine


def _grid_centre(atlas: Atlas, shape: tuple[int, int, int], spacing: float) -> np.ndarray:
    top = atlas.top + 10.0 / atlas.spacing
    k = top - (shape[2] - 1) / 2 * spacing / atlas.spacing
    return np.array([atlas.centre[0], atlas.centre[1], k])


def _translation(*t: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = t
    return m


def _rotation(rng: np.random.Generator, max_degrees: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix (3, 3) from angles drawn uniformly within +-max_degrees about x, y, z."""
    ax, ay, az = (math.radians(rng.uniform(-m, m)) for m in max_degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


def synthesize_phantom(
    atlas: Atlas, shape: tuple[int, int, int], rng: np.random.Generator
) -> Phantom:
    """One head with a glioma on the output grid ``shape`` (X, Y, Z)."""
    spacing, affine = output_grid(atlas, shape)
    # Head pose and size: output mm -> template voxels, plus a smooth elastic displacement.
    scale = rng.uniform(0.92, 1.06) * rng.uniform(0.97, 1.03, size=3)
    matrix = _rotation(rng, (8.0, 4.0, 5.0)) / scale[None, :] / atlas.spacing
    origin = _grid_centre(atlas, shape, spacing) + rng.uniform(-2.0, 2.0, size=3)
    axes = [(np.arange(n) - (n - 1) / 2) * spacing for n in shape]
    elastic = rng.uniform(0.8, 2.0)  # template voxels (2 mm)
    ctrl = tuple(max(4, round(n * spacing / 40.0) + 3) for n in shape)
    # float64: map_coordinates would convert float32 coordinates on every call.
    coords = np.empty((3, *shape), dtype=np.float64)
    for i in range(3):
        coords[i] = elastic * smooth_field(rng, shape, ctrl)
        coords[i] += (origin[i] + matrix[i, 0] * axes[0])[:, None, None]
        coords[i] += (matrix[i, 1] * axes[1])[None, :, None]
        coords[i] += (matrix[i, 2] * axes[2])[None, None, :]
    centre = _tumour_centre(atlas, coords, rng)
    tumour = sample_tumour(rng)
    push_box = tumour_box(centre, 3.0 * tumour.push_sigma, spacing, shape)
    mass_effect(coords, push_box, box_mm_offsets(axes, push_box, centre), matrix, tumour)

    csf_rim, bone, scalp = rng.uniform(0.5, 2.5), rng.uniform(4.0, 7.0), rng.uniform(3.0, 7.0)
    hull = _sample(atlas.hull, coords)
    # Grey and white matter only count inside the CSF rim (see squeeze below): sample them
    # there alone, about a quarter of the grid.
    within = hull < csf_rim + spacing / 2
    points = coords[:, within]
    del coords
    grey, white = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    grey[within] = _sample(atlas.grey, points)
    white[within] = _sample(atlas.white, points)
    fractions = np.zeros((len(Tissue), *shape), dtype=np.float32)
    inside = ramp(hull, csf_rim, spacing)
    skull = ramp(hull, csf_rim + bone, spacing)
    head = ramp(hull, csf_rim + bone + scalp, spacing)
    brain = grey + white
    squeeze = np.minimum(1.0, inside / np.maximum(brain, 1e-6))
    fractions[Tissue.GREY] = grey * squeeze
    fractions[Tissue.WHITE] = white * squeeze
    fractions[Tissue.CSF] = np.maximum(inside - brain * squeeze, 0.0)
    fractions[Tissue.BONE] = skull - inside
    fractions[Tissue.FAT] = head - skull
    fractions[Tissue.AIR] = 1.0 - head
    labels = np.zeros(shape, dtype=np.uint8)
    box = tumour_box(centre, tumour.extent, spacing, shape)
    side = _midline_side(atlas, origin, matrix, axes, box, centre)
    render_tumour(
        fractions, labels, box, box_mm_offsets(axes, box, centre), side, tumour, spacing, rng
    )
    return Phantom(fractions=fractions, labels=labels, spacing=spacing, affine=affine)


def _sample(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``volume`` at voxel coordinates ``coords`` (3, ...)."""
    return ndi.map_coordinates(volume, coords, order=1, mode="nearest", prefilter=False)


def _tumour_centre(
    atlas: Atlas, coords: np.ndarray, rng: np.random.Generator
) -> tuple[int, int, int]:
    """An output voxel whose template position is a candidate (deep supratentorial WM)."""
    shape = coords.shape[1:]
    for _ in range(4):
        idx = rng.integers(0, shape, size=(256, 3))
        hits = _candidate(atlas, coords[:, idx[:, 0], idx[:, 1], idx[:, 2]])
        if hits.any():
            return tuple(int(v) for v in idx[np.argmax(hits)])
    hits = np.flatnonzero(_candidate(atlas, coords.reshape(3, -1)))  # tiny grids: exhaustive
    if hits.size == 0:
        raise ValueError(f"grid {shape} holds no deep white matter for a tumour")
    return tuple(int(v) for v in np.unravel_index(rng.choice(hits), shape))


def _candidate(atlas: Atlas, points: np.ndarray) -> np.ndarray:
    ijk = np.rint(points).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(atlas.candidates.shape)[:, None]), axis=0)
    hits = np.zeros(points.shape[1], dtype=bool)
    hits[inside] = atlas.candidates[tuple(ijk[:, inside])]
    return hits


def _midline_side(
    atlas: Atlas,
    origin: np.ndarray,
    matrix: np.ndarray,
    axes: list[np.ndarray],
    box: tuple[slice, slice, slice],
    centre: tuple[int, int, int],
) -> np.ndarray:
    """Box-shaped float32 mm from the mid-sagittal plane (MNI x = 0), positive on the side of
    ``centre``; from the affine part of the head pose (the elastic part moves a few mm)."""
    a, b, c = (matrix[0, i] * axes[i][box[i]] for i in range(3))
    u = origin[0] + a[:, None, None] + b[None, :, None] + c[None, None, :]
    x = atlas.affine[0, 0] * u + atlas.affine[0, 3]
    inner = tuple(v - s.start for v, s in zip(centre, box, strict=True))
    return (x if x[inner] >= 0 else -x).astype(np.float32)


def synthesize_case(
    atlas: Atlas, shape: tuple[int, int, int], profile: ScannerProfile, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """T2 and FLAIR images (X, Y, Z) float32 keyed by modality, labels uint8, affine (4, 4)."""
    phantom = synthesize_phantom(atlas, shape, rng)
    coil = bias_field(rng, shape, profile.bias)
    images = {
        m: acquire(phantom.fractions, phantom.spacing, profile, m, coil, rng)
        for m in ("t2", "flair")
    }
    return images, phantom.labels, phantom.affine
