"""The slices of many records (:func:`load_slices`), read through an on-disk cache.

:class:`SliceCache` keeps :func:`~fedll.data.slices.preprocess`'s result per (file, channel,
spec, every_slice) as .npy files and a small JSON of indices and spacing, so repeated trials
read memory maps instead of NIfTI; :func:`load_slices` fills it, optionally from a pool of
processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
import torch

from fedll.atomic import atomic_path
from fedll.config.schema import SliceConfig
from fedll.data.nifti import CaseRecord, load_volume
from fedll.data.slices import CaseSlices, Stack, preprocess
from fedll.errors import DataError

logger = logging.getLogger(__name__)

# Bump when the preprocessing changes so old cache entries are no longer read.
CACHE_FORMAT = 3  # 3: slice indices and spacing kept beside the arrays
ENTRY_PARTS = ("images.npy", "slices.json", "masks.npy")  # written in this order


class SliceCache:
    """Preprocessed slices on disk, keyed by the source files' identity and the SliceConfig.

    The key hashes the resolved image and mask paths with their size and mtime_ns, the
    channel, the spec, ``every_slice`` and CACHE_FORMAT, so an edited file or a new spec
    misses. Entries are ``<key>.images.npy``, ``<key>.slices.json`` (indices and spacing) and
    ``<key>.masks.npy``, each written to a temporary name and moved into place; masks are
    written last and mark a complete entry. Stale entries are not pruned.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)

    def key(self, record: CaseRecord, spec: SliceConfig, every_slice: bool = False) -> str:
        """The hex key of a record's slices under ``spec``."""
        parts = {
            "format": CACHE_FORMAT,
            "image": _file_identity(record.image),
            "mask": _file_identity(record.mask),
            "channel": record.channel,
            "spec": spec.model_dump(),
            "every_slice": every_slice,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, record: CaseRecord, spec: SliceConfig, every_slice: bool = False) -> CaseSlices:
        """The record's slices: memory-mapped from the cache, or computed and stored."""
        key = self.key(record, spec, every_slice)
        paths = [self.cache_dir / f"{key}.{part}" for part in ENTRY_PARTS]
        stack = _read_entry(*paths, spec.size)
        if stack is None:
            stack = _compute(record, spec, every_slice)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            _save_atomic(paths[0], stack[0])
            with atomic_path(paths[1]) as tmp:
                tmp.write_text(json.dumps({"indices": stack[2].tolist(), "spacing": stack[3]}))
            _save_atomic(paths[2], stack[1])
            logger.debug("cached %s %s as %s", record.patient, record.modality, key)
        return CaseSlices(record.patient, record.modality, record.site, *stack)


def load_slices(
    records: Sequence[CaseRecord],
    spec: SliceConfig,
    cache: SliceCache | None = None,
    *,
    processes: int = 1,
    every_slice: bool = False,
) -> list[CaseSlices]:
    """The slices of every record, in order; ``processes`` > 1 reads NIfTI in a spawn pool.

    With a cache, the pool only fills it and the parent memory-maps the entries.
    ``every_slice``: every brain slice (whole-volume evaluation), see :func:`preprocess`.
    """
    if processes <= 1 or len(records) <= 1:
        return [_slices(record, spec, cache, every_slice) for record in records]
    context = multiprocessing.get_context("spawn")  # never fork torch's or Ray's threads
    workers = min(processes, len(records))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        if cache is None:
            return list(pool.map(_slices, records, repeat(spec), repeat(None), repeat(every_slice)))
        list(pool.map(_fill, records, repeat(spec), repeat(cache.cache_dir), repeat(every_slice)))
    return [cache.get(record, spec, every_slice) for record in records]  # all hits now


def _slices(
    record: CaseRecord, spec: SliceConfig, cache: SliceCache | None, every_slice: bool = False
) -> CaseSlices:
    if cache is not None:
        return cache.get(record, spec, every_slice)
    stack = _compute(record, spec, every_slice)
    return CaseSlices(record.patient, record.modality, record.site, *stack)


def _fill(record: CaseRecord, spec: SliceConfig, cache_dir: Path, every_slice: bool) -> None:
    SliceCache(cache_dir).get(record, spec, every_slice)


def _one_thread() -> None:
    torch.set_num_threads(1)  # the pool's processes already use the cores


def _compute(record: CaseRecord, spec: SliceConfig, every_slice: bool = False) -> Stack:
    try:
        return preprocess(load_volume(record), spec, every_slice=every_slice)
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


def _read_entry(images_path: Path, meta_path: Path, masks_path: Path, size: int) -> Stack | None:
    """Memory maps of a complete, well-formed entry (and its indices and spacing), else None
    (a miss)."""
    if not masks_path.is_file():
        return None
    try:
        images = np.load(images_path, mmap_mode="r")
        masks = np.load(masks_path, mmap_mode="r")
        meta = json.loads(meta_path.read_text())
        indices = np.asarray(meta["indices"], dtype=np.int64).reshape(-1)
        spacing = tuple(float(s) for s in meta["spacing"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring unreadable cache entry %s (%s)", images_path.name, exc)
        return None
    expected = (images.shape[0], 1, size, size)
    dtypes = (images.dtype, masks.dtype)
    if (
        images.shape != expected
        or masks.shape != expected
        or dtypes != (np.float32, np.uint8)
        or len(indices) != images.shape[0]
        or len(spacing) != 3
    ):
        logger.warning("ignoring malformed cache entry %s", images_path.name)
        return None
    return images, masks, indices, spacing  # type: ignore[return-value]


def _save_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.save(handle, np.ascontiguousarray(array))
