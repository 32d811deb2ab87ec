"""Cold NIfTI load + preprocess vs warm SliceCache reads, on a BraTS 2021-style cohort.

Writes ``--cases`` cases of ``--shape`` voxels (int16 .nii.gz T2 and FLAIR with a smooth
random texture inside an ellipsoid brain, a blob tumour labelled 1/2/4), then times:
cold = load_slices with an empty cache (read + validate + preprocess + write .npy), split
into its NIfTI-reading and preprocessing parts; warm = load_slices on the filled cache,
touching every voxel of the memory maps (median of ``--repeats``). Prints cases/s,
slices/s and the warm/cold speed-up.

    .venv/bin/python benchmarks/bench_slices.py                    # 20 cases, 96x112x80
    .venv/bin/python benchmarks/bench_slices.py --cases 4 --shape 240 240 155
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from fedll.config import SliceConfig
from fedll.data.layouts import discover
from fedll.data.nifti import load_volume
from fedll.data.slice_cache import SliceCache, load_slices
from fedll.data.slices import preprocess


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--shape", nargs=3, type=int, default=[96, 112, 80])
    parser.add_argument("--size", type=int, default=64, help="SliceConfig.size")
    parser.add_argument("--empty-fraction", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3, help="warm passes (median)")
    parser.add_argument("--processes", type=int, default=1, help="load_slices processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=None, help="cohort + cache folder (temp)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def write_case(folder: Path, name: str, shape: tuple[int, int, int], seed: int) -> None:
    """One BraTS 2021-style case: {name}_t2, _flair (int16) and _seg (uint8, 0/1/2/4)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    brain = np.sqrt((grid**2).sum(axis=0)) < 0.85
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2.0)
    centre = rng.uniform(-0.35, 0.35, 3)[:, None, None, None]
    radii = rng.uniform(0.12, 0.25, 3)[:, None, None, None]
    blob = np.sqrt((((grid - centre) / radii) ** 2).sum(axis=0)) + 0.2 * texture
    labels = np.select([blob < 0.5, blob < 0.75, blob < 1.4], [1, 4, 2], 0).astype(np.uint8)
    labels[~brain] = 0
    tissue = 1.0 + 0.15 * texture / texture.std()
    contrast = {"t2": (1.0, 2.7, 1.8, 3.5), "flair": (1.0, 2.3, 1.6, 1.4)}
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for modality, (wm, oedema, rim, core) in contrast.items():
        signal = tissue * np.select(
            [labels == 2, labels == 4, labels == 1], [oedema, rim, core], wm
        )
        noisy = signal + 0.03 * rng.standard_normal(shape)
        image = np.where(brain, 300 * np.clip(noisy, 0, None), 0).astype(np.int16)
        nib.save(nib.Nifti1Image(image, affine), folder / name / f"{name}_{modality}.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), folder / name / f"{name}_seg.nii.gz")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    spec = SliceConfig(size=args.size, empty_fraction=args.empty_fraction, seed=args.seed)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        root = Path(tmp) / "cohort"
        for index in range(args.cases):
            name = f"BraTS2021_{index:05d}"
            (root / name).mkdir(parents=True)
            write_case(root, name, shape, args.seed + index)
        records = discover(root)
        megabytes = sum(p.stat().st_size for p in root.rglob("*.nii.gz")) / 2**20
        print(
            f"{args.cases} cases x 2 modalities, {shape[0]}x{shape[1]}x{shape[2]}, "
            f"{megabytes:.1f} MiB of .nii.gz; slices {args.size}x{args.size}, "
            f"empty fraction {args.empty_fraction}; torch threads {args.threads}, "
            f"processes {args.processes}"
        )

        # Parts of the cold path, measured apart (no cache): reading vs preprocessing.
        start = time.perf_counter()
        volumes = [load_volume(record) for record in records]
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        for volume in volumes:
            preprocess(volume, spec)
        prep_s = time.perf_counter() - start
        del volumes

        cache = SliceCache(Path(tmp) / "cache")
        start = time.perf_counter()
        cold = load_slices(records, spec, cache, processes=args.processes)
        cold_s = time.perf_counter() - start
        slices = sum(len(case.images) for case in cold)

        warm_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            warm = load_slices(records, spec, SliceCache(Path(tmp) / "cache"))
            total = sum(float(np.asarray(c.images).sum()) + int(c.masks.sum()) for c in warm)
            warm_times.append(time.perf_counter() - start)
        warm_s = statistics.median(warm_times)
        assert np.isfinite(total)

    n = len(records)
    print(f"{slices} slices from {n} records ({slices / n:.1f} per record)")
    print(f"{'pass':<28} {'seconds':>8} {'records/s':>10} {'slices/s':>10}")
    for label, seconds in (
        ("  NIfTI read + validate", read_s),
        ("  preprocess", prep_s),
        ("cold (read+prep+write)", cold_s),
        ("warm (cache, all voxels)", warm_s),
    ):
        print(f"{label:<28} {seconds:8.3f} {n / seconds:10.1f} {slices / seconds:10.0f}")
    print(f"warm / cold speed-up: {cold_s / warm_s:.0f}x")


if __name__ == "__main__":
    main()
