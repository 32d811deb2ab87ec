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

from fedll.data.scanner import ScannerProfile, Tissue, acquire

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


def _ramp(distance: np.ndarray, edge: float, width: float) -> np.ndarray:
    """Fraction of a voxel (width mm) lying on the inner side of ``distance == edge``."""
    return np.clip(0.5 + (edge - distance) / width, 0.0, 1.0)


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
    tumour = _sample_tumour(rng)
    push_box = _box(centre, 3.0 * tumour.push_sigma, spacing, shape)
    _mass_effect(coords, push_box, _box_mm(axes, push_box, centre), matrix, tumour)

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
    inside = _ramp(hull, csf_rim, spacing)
    skull = _ramp(hull, csf_rim + bone, spacing)
    head = _ramp(hull, csf_rim + bone + scalp, spacing)
    brain = grey + white
    squeeze = np.minimum(1.0, inside / np.maximum(brain, 1e-6))
    fractions[Tissue.GREY] = grey * squeeze
    fractions[Tissue.WHITE] = white * squeeze
    fractions[Tissue.CSF] = np.maximum(inside - brain * squeeze, 0.0)
    fractions[Tissue.BONE] = skull - inside
    fractions[Tissue.FAT] = head - skull
    fractions[Tissue.AIR] = 1.0 - head
    labels = np.zeros(shape, dtype=np.uint8)
    box = _box(centre, tumour.extent, spacing, shape)
    side = _midline_side(atlas, origin, matrix, axes, box, centre)
    _render_tumour(fractions, labels, box, _box_mm(axes, box, centre), side, tumour, spacing, rng)
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


Lobes = tuple[np.ndarray, np.ndarray, np.ndarray]  # directions (K, 3), amplitudes (K,), kappas (K,)
ROUGHNESS = 0.12  # relative amplitude of the smooth boundary irregularity
_WHITE_REACH = (0.6, 1.1)  # oedema reach factor in grey (0) ... white (1) matter


@dataclass(frozen=True, eq=False)
class _Tumour:
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


def _sample_tumour(rng: np.random.Generator) -> _Tumour:
    radius = rng.uniform(6.0, 20.0)
    aspect = rng.uniform(0.7, 1.3, size=3)
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    high_grade = rng.random() < 0.75
    rim = rng.uniform(2.5, 6.0)  # mm of enhancing rim around the necrosis
    return _Tumour(
        radius=radius,
        radii=radius * aspect / np.prod(aspect) ** (1 / 3),
        rotation=q * np.sign(np.diag(r))[None, :],
        necrosis=max(0.2, 1.0 - rim / radius) if high_grade else None,
        oedema=rng.uniform(1.4, 2.8),
        core_lobes=_lobes(rng),
        oedema_lobes=_lobes(rng),
        push=rng.uniform(0.2, 0.45),
    )


def _box(
    centre: tuple[int, int, int], extent: float, spacing: float, shape: tuple[int, int, int]
) -> tuple[slice, slice, slice]:
    h = math.ceil(extent / spacing) + 1
    return tuple(
        slice(max(c - h, 0), min(c + h + 1, n)) for c, n in zip(centre, shape, strict=True)
    )


def _box_mm(
    axes: list[np.ndarray], box: tuple[slice, slice, slice], centre: tuple[int, int, int]
) -> list[np.ndarray]:
    """1-D float32 mm offsets from the centre voxel along each axis of ``box``."""
    return [(axes[i][box[i]] - axes[i][centre[i]]).astype(np.float32) for i in range(3)]


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


def _mass_effect(
    coords: np.ndarray,
    box: tuple[slice, slice, slice],
    box_mm: list[np.ndarray],
    matrix: np.ndarray,
    tumour: _Tumour,
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


def _render_tumour(
    fractions: np.ndarray,
    labels: np.ndarray,
    box: tuple[slice, slice, slice],
    box_mm: list[np.ndarray],
    side: np.ndarray,
    tumour: _Tumour,
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
    core = _ramp(rho, 1.0, spacing / tumour.radius) * inside
    # Oedema reaches further along white matter and spares cortex and CSF.
    white = ndi.uniform_filter(local[Tissue.WHITE], 2 * round(4.0 / spacing) + 1)
    lo, hi = _WHITE_REACH
    reach = tumour.oedema * _lobe(unit, tumour.oedema_lobes) * rough * (lo + (hi - lo) * white)
    reach *= np.exp(np.minimum(side, 0.0) / 6.0)
    affinity = np.clip(local[Tissue.WHITE] + 0.4 * local[Tissue.GREY], 0.0, 1.0)
    extent = tumour.oedema * tumour.radius
    oedema = _ramp(r / reach, 1.0, spacing / extent) * affinity * (1.0 - core)
    if tumour.necrosis is None:
        parts = {Tissue.NON_ENHANCING: core}
    else:
        necrotic = np.minimum(_ramp(rho, tumour.necrosis, spacing / tumour.radius) * inside, core)
        parts = {Tissue.NECROSIS: necrotic, Tissue.ENHANCING: core - necrotic}
    parts[Tissue.OEDEMA] = oedema
    total = core + oedema
    local[: Tissue.OEDEMA] *= 1.0 - total  # normal tissues make room
    for tissue, part in parts.items():
        local[tissue] = part
    codes = {Tissue.NECROSIS: 1, Tissue.NON_ENHANCING: 1, Tissue.OEDEMA: 2, Tissue.ENHANCING: 4}
    order = list(parts)
    winner = np.argmax(np.stack([parts[t] for t in order]), axis=0)
    sub = np.asarray([codes[t] for t in order], dtype=np.uint8)[winner]
    labels[box] = np.where(total >= 0.5, sub, 0)


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
