from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedll.config import SliceConfig
from fedll.data.layouts import discover
from fedll.data.nifti import CaseRecord, load_volume
from fedll.data.slice_cache import SliceCache, load_slices
from fedll.errors import DataError

WriteNifti = Callable[..., Path]


def test_preprocess_error_names_the_file(tmp_path: Path, write_nifti: WriteNifti) -> None:
    flat = np.zeros((8, 8, 6), np.float32)
    flat[2:6, 2:6, 1:5] = 10.0  # a brain without contrast
    labels = np.zeros((8, 8, 6), np.uint8)
    record = CaseRecord(
        "c",
        "t2",
        write_nifti(tmp_path / "c_t2.nii", flat),
        write_nifti(tmp_path / "c_seg.nii", labels),
    )
    with pytest.raises(DataError, match="c_t2.nii: no intensity variation"):
        load_slices([record], SliceConfig(size=16))


def test_cache_hit_equal_and_reads_no_nifti(
    brats2021_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = discover(brats2021_root)
    spec = SliceConfig(size=16, empty_fraction=0.5)
    cache = SliceCache(tmp_path / "cache")
    cold = load_slices(records, spec, cache)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2 * len(records)
    assert not list((tmp_path / "cache").glob("*.tmp"))

    def no_nifti(*args: object, **kwargs: object) -> None:
        raise AssertionError("nibabel.load called on a cache hit")

    monkeypatch.setattr(nib, "load", no_nifti)
    warm = load_slices(records, spec, cache)
    for a, b, record in zip(cold, warm, records, strict=True):
        assert (b.patient, b.modality, b.site) == (record.patient, record.modality, record.site)
        assert isinstance(b.images, np.memmap)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.indices, b.indices)
        assert a.spacing == b.spacing
    with pytest.raises(DataError, match="nibabel.load called"):  # a new spec misses
        cache.get(records[0], SliceConfig(size=16, empty_fraction=0.5, seed=1))


def test_cache_invalidated_when_the_file_changes(
    brats2021_root: Path, tmp_path: Path, write_nifti: WriteNifti
) -> None:
    record = discover(brats2021_root)[0]
    spec = SliceConfig(size=16, empty_fraction=0.0)
    cache = SliceCache(tmp_path / "cache")
    before = cache.get(record, spec)
    key = cache.key(record, spec)
    image = load_volume(record).image
    write_nifti(record.image, np.where(image > 0, image.max() + 1 - image, 0))  # inverted contrast
    stat = record.image.stat()
    os.utime(record.image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.key(record, spec) != key
    after = cache.get(record, spec)
    np.testing.assert_array_equal(before.masks, after.masks)
    assert not np.allclose(before.images, after.images)
    assert cache.key(record, SliceConfig(size=16, empty_fraction=0.0, seed=1)) != cache.key(
        record, spec
    )


def test_corrupt_cache_entry_is_recomputed(brats2021_root: Path, tmp_path: Path) -> None:
    record = discover(brats2021_root)[0]
    spec = SliceConfig(size=16)
    cache = SliceCache(tmp_path / "cache")
    good = cache.get(record, spec)
    (tmp_path / "cache" / f"{cache.key(record, spec)}.images.npy").write_bytes(b"\x93NUMPY junk")
    again = cache.get(record, spec)
    np.testing.assert_array_equal(good.images, again.images)


@pytest.mark.slow  # two spawned workers import torch: ~5-10 s on a busy 2-core machine
def test_process_pool_matches_serial(brats2021_root: Path, tmp_path: Path) -> None:
    records = discover(brats2021_root)[:2]
    spec = SliceConfig(size=16)
    serial = load_slices(records, spec, None)
    cached = load_slices(records, spec, SliceCache(tmp_path / "cache"), processes=2)
    pooled = load_slices(records, spec, None, processes=2)
    for a, b, c in zip(serial, cached, pooled, strict=True):
        assert (a.patient, a.modality) == (b.patient, b.modality) == (c.patient, c.modality)
        for other in (b, c):
            np.testing.assert_array_equal(a.images, other.images)
            np.testing.assert_array_equal(a.masks, other.masks)
