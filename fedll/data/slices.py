"""Preprocessing for training: brain z-score, 2-D slice selection, resizing, and an on-disk cache.

A volume becomes ``(N, 1, size, size)`` slices (the recipe is the scenario's
:class:`~fedll.config.schema.SliceConfig`): every slice with tumour along ``spec.axis``,
plus ``round(empty_fraction x tumour slices)`` tumour-free slices with brain (at least 10 %
of the largest brain cross-section), drawn with ``spec.seed``. Intensities are z-scored
with the mean and standard deviation of the brain voxels (:func:`brain_mask`, plus the
tumour) and clipped to [-5, 5]. The z-score is applied to every voxel, not only the brain,
so a structure left out of the brain mask keeps its contrast (FLAIR's dark CSF) and the
background becomes one constant, also used as padding. Each slice is padded to a square
field of view in millimetres (so anisotropic pixels keep their physical aspect) and
resized: antialiased bilinear for images, nearest for masks. Masks are whole tumour
(label > 0). With ``every_slice`` (how test cases are prepared for whole-volume evaluation,
``evaluation.slices: all``) every slice holding brain or tumour is kept instead.

Each case also keeps the indices of its slices along ``spec.axis`` and the spacing of the
resized stack (through-plane: the volume's spacing along the axis; in-plane: the square
field of view in mm over ``size``), so per-case metrics can be computed in 3-D
(:func:`CaseSlices.volume`).

:mod:`~fedll.data.slice_cache` keeps the result on disk and loads the slices of many records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedll.config.schema import SliceConfig
from fedll.data.nifti import Volume
from fedll.errors import DataError

BRAIN_FRACTION = 0.1  # brain = image > min + 10 % of (99th percentile - min)
MIN_BRAIN_AREA = 0.1  # tumour-free slices need this share of the largest brain cross-section
CLIP = 5.0  # z-scores are clipped to [-CLIP, CLIP]


@dataclass(frozen=True, eq=False)
class CaseSlices:
    """The slices of one record.

    images: float32 (N, 1, size, size), z-scored inside the brain. masks: uint8 (N, 1, size,
    size), whole tumour. Both may be read-only memory maps when they come from the cache.
    indices: int64 (N,), increasing, each slice's index along the slicing axis (default
    0..N-1: adjacent slices). spacing: mm between slices, then the two in-plane pixel sizes
    after resizing (the order of the stack's axes; default 1 mm each).
    """

    patient: str
    modality: str
    site: str | None
    images: np.ndarray
    masks: np.ndarray
    indices: np.ndarray | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.indices is None:
            object.__setattr__(self, "indices", np.arange(len(self.images), dtype=np.int64))
        if len(self.indices) != len(self.images):  # type: ignore[arg-type]
            raise DataError(
                f"{self.patient} {self.modality}: {len(self.indices)} slice indices for "  # type: ignore[arg-type]
                f"{len(self.images)} slices"
            )

    def volume(self, slices: np.ndarray) -> np.ndarray:
        """(D, S, S) from per-slice ``slices`` (N, [1,] S, S) (a prediction, or the masks):
        each slice at its index, D spanning the first to the last index, the slices between
        non-adjacent selected ones left empty (0).

        Every tumour slice is always selected, so the gaps hold no truth; leaving them empty
        keeps the physical distances between slices right (3-D metrics use ``spacing``) and
        counts no prediction there, as the model never saw those slices.
        """
        slices = np.asarray(slices).reshape(len(self.images), *np.shape(slices)[-2:])
        indices = np.asarray(self.indices)
        if len(indices) == 0:
            return np.zeros((0, *slices.shape[1:]), dtype=slices.dtype)
        out = np.zeros((int(indices[-1] - indices[0]) + 1, *slices.shape[1:]), slices.dtype)
        out[indices - indices[0]] = slices
        return out


Stack = tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]
"""images (N, 1, S, S), masks (N, 1, S, S), slice indices (N,), spacing (3,) in mm."""


def preprocess(
    volume: Volume,
    spec: SliceConfig,
    *,
    brain: np.ndarray | None = None,
    every_slice: bool = False,
) -> Stack:
    """Slices of a volume: float32 images and uint8 whole-tumour masks, both (N, 1, S, S),
    the slice indices along ``spec.axis`` (N,) and the stack's spacing (through-plane, then
    the two in-plane pixel sizes after resizing, mm).

    brain: optional bool (X, Y, Z) brain mask; by default :func:`brain_mask` of the image.
    every_slice: keep every slice with brain or tumour (whole-volume evaluation) instead of
    the selection of :func:`select_slices`.
    """
    brain = _brain(volume, brain)
    keep = _keep(volume.labels > 0, brain, spec, every_slice)
    images = model_inputs(normalise(volume.image, brain), volume.spacing, spec, keep)
    tumour = np.moveaxis(volume.labels > 0, spec.axis, 0)[keep].astype(np.float32)
    in_plane = in_plane_spacing(volume.spacing, spec.axis)
    masks = resize(tumour, in_plane, spec.size, "nearest-exact")
    shape = np.moveaxis(volume.image, spec.axis, 0).shape[1:]
    spacing = (float(volume.spacing[spec.axis]), *resized_spacing(shape, in_plane, spec.size))
    return images, masks[:, None].astype(np.uint8), keep.astype(np.int64), spacing


def slice_indices(
    volume: Volume, spec: SliceConfig, *, brain: np.ndarray | None = None
) -> np.ndarray:
    """The indices along ``spec.axis`` of the slices :func:`preprocess` keeps, sorted."""
    return _keep(volume.labels > 0, _brain(volume, brain), spec)


def model_inputs(
    image: np.ndarray,
    spacing: Sequence[float],
    spec: SliceConfig,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """float32 (N, 1, S, S): the model's input slices of a z-scored (X, Y, Z) ``image``
    (:func:`normalise`) along ``spec.axis``, the slices ``keep`` (all by default), each
    padded with the volume's background and resized (:func:`resize`). Training and
    ``fedll segment`` both make their inputs here."""
    stack = np.moveaxis(image, spec.axis, 0)  # (D, A, B), (A, B) in RAS+ order
    chosen = stack if keep is None else stack[keep]
    background = float(image.min())
    in_plane = in_plane_spacing(spacing, spec.axis)
    return resize(chosen, in_plane, spec.size, mode="bilinear", fill=background)[:, None]


def in_plane_spacing(spacing: Sequence[float], axis: int) -> tuple[float, float]:
    """The (A, B) pixel size in mm of slices along ``axis`` of a volume of ``spacing``."""
    a, b = (float(s) for i, s in enumerate(spacing) if i != axis)
    return a, b


def _brain(volume: Volume, brain: np.ndarray | None) -> np.ndarray:
    """bool (X, Y, Z): the brain mask (given, or :func:`brain_mask`) plus the tumour."""
    if brain is None:
        brain = brain_mask(volume.image)
    elif brain.shape != volume.image.shape:
        raise DataError(f"brain mask shape {brain.shape} differs from image {volume.image.shape}")
    return brain | (volume.labels > 0)


def _keep(
    tumour: np.ndarray, brain: np.ndarray, spec: SliceConfig, every_slice: bool = False
) -> np.ndarray:
    """The slices to keep along ``spec.axis``, from bool (X, Y, Z) tumour and brain: the
    selection of :func:`select_slices`, or with ``every_slice`` each slice with brain or
    tumour."""
    area = np.moveaxis(brain, spec.axis, 0).sum(axis=(1, 2))
    with_tumour = np.moveaxis(tumour, spec.axis, 0).any(axis=(1, 2))
    if every_slice:
        return np.flatnonzero((area > 0) | with_tumour)
    with_brain = area >= MIN_BRAIN_AREA * area.max()
    return select_slices(with_tumour, with_brain, spec)


def resized_spacing(
    shape: Sequence[int], spacing: Sequence[float], size: int
) -> tuple[float, float]:
    """The (A, B) pixel size in mm after :func:`resize` of an (A, B) slice to ``size``: the
    padded field of view (:func:`square_padding`) over ``size``."""
    (a0, a1), (b0, b1) = square_padding((shape[0], shape[1]), spacing)
    return ((shape[0] + a0 + a1) * spacing[0] / size, (shape[1] + b0 + b1) * spacing[1] / size)


def brain_mask(image: np.ndarray) -> np.ndarray:
    """bool (X, Y, Z): voxels above min + BRAIN_FRACTION x (99th percentile - min).

    Skull-stripped scans have a background of exactly their minimum; the 10 % margin also
    leaves out a Rician noise floor of up to ~5 % of white matter in unstripped scans (and
    FLAIR's darkest CSF, which only the statistics miss). The percentile is taken on every
    2nd voxel along each axis, for speed.
    """
    low = float(image.min())
    high = float(np.percentile(image[::2, ::2, ::2], 99))
    return image > low + BRAIN_FRACTION * (high - low)


def normalise(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """float32 (X, Y, Z): ``image`` z-scored with the statistics of its ``brain`` voxels,
    clipped to [-CLIP, CLIP]."""
    values = image[brain].astype(np.float64)
    if values.size == 0 or values.std() == 0:
        raise DataError("no intensity variation inside the brain")
    mean, std = float(values.mean()), float(values.std())
    return np.clip((image.astype(np.float32, copy=False) - mean) / std, -CLIP, CLIP)


def select_slices(tumour: np.ndarray, brain: np.ndarray, spec: SliceConfig) -> np.ndarray:
    """Sorted slice indices: all tumour slices plus a seeded share of tumour-free brain slices.

    tumour, brain: bool (D,), whether each slice holds tumour / enough brain.
    """
    with_tumour = np.flatnonzero(tumour)
    candidates = np.flatnonzero(brain & ~tumour)
    wanted = math.floor(spec.empty_fraction * with_tumour.size + 0.5)
    count = min(wanted, candidates.size)
    chosen = np.random.default_rng(spec.seed).choice(candidates, size=count, replace=False)
    return np.sort(np.concatenate([with_tumour, chosen]))


def resize(
    stack: np.ndarray, spacing: Sequence[float], size: int, mode: str, fill: float = 0.0
) -> np.ndarray:
    """float32 (N, size, size) from (N, A, B): pad to a square field of view, then resize.

    spacing: the (A, B) pixel size in mm. Padding (value ``fill``) is centred, so that
    A x spacing[0] and B x spacing[1] become equal; mode is a torch.nn.functional.interpolate
    mode (bilinear is antialiased).
    """
    n, a, b = stack.shape
    if n == 0:
        return np.zeros((0, size, size), dtype=np.float32)
    padded = np.pad(
        stack.astype(np.float32, copy=False),
        ((0, 0), *square_padding((a, b), spacing)),
        constant_values=fill,
    )
    tensor = torch.from_numpy(padded)[:, None]
    if mode == "bilinear":
        out = F.interpolate(
            tensor, size=(size, size), mode=mode, align_corners=False, antialias=True
        )
    else:
        out = F.interpolate(tensor, size=(size, size), mode=mode)
    return out[:, 0].numpy()


def square_padding(
    shape: tuple[int, int], spacing: Sequence[float]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (before, after) padding of each axis of an (A, B) slice that makes its field of
    view square in mm (``spacing``: the (A, B) pixel size), centred."""
    a, b = shape
    extent = max(a * spacing[0], b * spacing[1])
    pad_a = max(a, round(extent / spacing[0])) - a
    pad_b = max(b, round(extent / spacing[1])) - b
    return (pad_a // 2, pad_a - pad_a // 2), (pad_b // 2, pad_b - pad_b // 2)


def unresize(stack: np.ndarray, shape: tuple[int, int], spacing: Sequence[float]) -> np.ndarray:
    """float32 (N, A, B) from (N, S, S): the inverse of :func:`resize` for slices of ``shape``
    and ``spacing``: bilinear back to the padded square field of view, then the padding cut
    off. Meant for logits (threshold after), which interpolate without a label mix-up."""
    (a0, a1), (b0, b1) = square_padding(shape, spacing)
    target = (shape[0] + a0 + a1, shape[1] + b0 + b1)
    tensor = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    square = F.interpolate(tensor, size=target, mode="bilinear", align_corners=False)[:, 0]
    return square[:, a0 : a0 + shape[0], b0 : b0 + shape[1]].numpy()
