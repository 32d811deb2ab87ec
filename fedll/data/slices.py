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
(label > 0).

:class:`SliceCache` keeps the result per (file, channel, spec) as .npy files, so repeated
trials read memory maps instead of NIfTI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedll.atomic import atomic_path
from fedll.config.schema import SliceConfig
from fedll.data.nifti import CaseRecord, Volume, load_volume
from fedll.errors import DataError

logger = logging.getLogger(__name__)

BRAIN_FRACTION = 0.1  # brain = image > min + 10 % of (99th percentile - min)
MIN_BRAIN_AREA = 0.1  # tumour-free slices need this share of the largest brain cross-section
CLIP = 5.0  # z-scores are clipped to [-CLIP, CLIP]
# Bump when the preprocessing changes so old cache entries are no longer read.
CACHE_FORMAT = 2


@dataclass(frozen=True, eq=False)
class CaseSlices:
    """The training slices of one record.

    images: float32 (N, 1, size, size), z-scored inside the brain. masks: uint8 (N, 1, size,
    size), whole tumour. Both may be read-only memory maps when they come from the cache.
    """

    patient: str
    modality: str
    site: str | None
    images: np.ndarray
    masks: np.ndarray


def preprocess(
    volume: Volume, spec: SliceConfig, *, brain: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Slices of a volume: float32 images and uint8 whole-tumour masks, both (N, 1, S, S).

    brain: optional bool (X, Y, Z) brain mask; by default :func:`brain_mask` of the image.
    """
    brain = _brain(volume, brain)
    keep = _keep(volume.labels > 0, brain, spec)
    images = model_inputs(normalise(volume.image, brain), volume.spacing, spec, keep)
    tumour = np.moveaxis(volume.labels > 0, spec.axis, 0)[keep].astype(np.float32)
    masks = resize(tumour, in_plane_spacing(volume.spacing, spec.axis), spec.size, "nearest-exact")
    return images, masks[:, None].astype(np.uint8)


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


def _keep(tumour: np.ndarray, brain: np.ndarray, spec: SliceConfig) -> np.ndarray:
    """The slices to keep along ``spec.axis``, from bool (X, Y, Z) tumour and brain."""
    area = np.moveaxis(brain, spec.axis, 0).sum(axis=(1, 2))
    with_brain = area >= MIN_BRAIN_AREA * area.max()
    with_tumour = np.moveaxis(tumour, spec.axis, 0).any(axis=(1, 2))
    return select_slices(with_tumour, with_brain, spec)


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


class SliceCache:
    """Preprocessed slices on disk, keyed by the source files' identity and the SliceConfig.

    The key hashes the resolved image and mask paths with their size and mtime_ns, the
    channel, the spec and CACHE_FORMAT, so an edited file or a new spec misses. Entries are
    ``<key>.images.npy`` and ``<key>.masks.npy``, each written to a temporary name and moved
    into place; masks are written last and mark a complete entry. Stale entries are not pruned.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)

    def key(self, record: CaseRecord, spec: SliceConfig) -> str:
        """The hex key of a record's slices under ``spec``."""
        parts = {
            "format": CACHE_FORMAT,
            "image": _file_identity(record.image),
            "mask": _file_identity(record.mask),
            "channel": record.channel,
            "spec": spec.model_dump(),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, record: CaseRecord, spec: SliceConfig) -> CaseSlices:
        """The record's slices: memory-mapped from the cache, or computed and stored."""
        key = self.key(record, spec)
        images_path = self.cache_dir / f"{key}.images.npy"
        masks_path = self.cache_dir / f"{key}.masks.npy"
        arrays = _read_entry(images_path, masks_path, spec.size)
        if arrays is None:
            arrays = _compute(record, spec)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            _save_atomic(images_path, arrays[0])
            _save_atomic(masks_path, arrays[1])
            logger.debug("cached %s %s as %s", record.patient, record.modality, key)
        return CaseSlices(record.patient, record.modality, record.site, *arrays)


def load_slices(
    records: Sequence[CaseRecord],
    spec: SliceConfig,
    cache: SliceCache | None = None,
    *,
    processes: int = 1,
) -> list[CaseSlices]:
    """The slices of every record, in order; ``processes`` > 1 reads NIfTI in a spawn pool.

    With a cache, the pool only fills it and the parent memory-maps the entries.
    """
    if processes <= 1 or len(records) <= 1:
        return [_slices(record, spec, cache) for record in records]
    context = multiprocessing.get_context("spawn")  # never fork torch's or Ray's threads
    workers = min(processes, len(records))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        if cache is None:
            return list(pool.map(_slices, records, repeat(spec), repeat(None)))
        list(pool.map(_fill, records, repeat(spec), repeat(cache.cache_dir)))
    return [cache.get(record, spec) for record in records]  # every entry is now a hit


def _slices(record: CaseRecord, spec: SliceConfig, cache: SliceCache | None) -> CaseSlices:
    if cache is not None:
        return cache.get(record, spec)
    images, masks = _compute(record, spec)
    return CaseSlices(record.patient, record.modality, record.site, images, masks)


def _fill(record: CaseRecord, spec: SliceConfig, cache_dir: Path) -> None:
    SliceCache(cache_dir).get(record, spec)


def _one_thread() -> None:
    torch.set_num_threads(1)  # the pool's processes already use the cores


def _compute(record: CaseRecord, spec: SliceConfig) -> tuple[np.ndarray, np.ndarray]:
    try:
        return preprocess(load_volume(record), spec)
    except DataError as exc:
        if str(record.image) in str(exc) or str(record.mask) in str(exc):
            raise
        raise DataError(f"{record.image}: {exc}") from exc


def _file_identity(path: Path) -> tuple[str, int, int]:
    try:
        resolved = path.resolve(strict=True)
        stat = resolved.stat()
    except OSError as exc:
        raise DataError(f"{path}: file not found") from exc
    return str(resolved), stat.st_size, stat.st_mtime_ns


def _read_entry(
    images_path: Path, masks_path: Path, size: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Memory maps of a complete, well-formed entry, else None (a miss)."""
    if not masks_path.is_file():
        return None
    try:
        images = np.load(images_path, mmap_mode="r")
        masks = np.load(masks_path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable cache entry %s (%s)", images_path.name, exc)
        return None
    expected = (images.shape[0], 1, size, size)
    dtypes = (images.dtype, masks.dtype)
    if images.shape != expected or masks.shape != expected or dtypes != (np.float32, np.uint8):
        logger.warning("ignoring malformed cache entry %s", images_path.name)
        return None
    return images, masks


def _save_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.save(handle, np.ascontiguousarray(array))
