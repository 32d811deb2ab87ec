"""Time synthetic cohort generation: seconds for N patients and patients per second.

    .venv/bin/python benchmarks/bench_cohort.py                  # 130 patients, default grid
    .venv/bin/python benchmarks/bench_cohort.py --workers 1 --patients 20

Prints the end-to-end wall time of ``generate_cohort`` (atlas load, synthesis, NIfTI
writing, manifest), the CPU seconds it used (this process and its workers: a figure that
holds on a shared machine), and the per-case split between synthesis and writing.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from fedll.data.cohort import _write_cases, generate_cohort, patient_rng, plan_cohort, site_scanner
from fedll.data.phantom import DEFAULT_SHAPE, load_atlas, synthesize_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=130)
    parser.add_argument("--sites", default="A,B,C,D")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE))
    parser.add_argument("--split-cases", type=int, default=5, help="cases for the per-case split")
    args = parser.parse_args()
    sites = args.sites.split(",")
    shape = tuple(args.shape)

    with tempfile.TemporaryDirectory() as tmp:
        cpu = _cpu_seconds()
        start = time.perf_counter()
        generate_cohort(
            Path(tmp) / "cohort", args.patients, sites, args.seed, shape=shape, workers=args.workers
        )
        total = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu
    print(
        f"cohort: {args.patients} patients, shape {shape}, {args.workers} worker(s): "
        f"{total:.1f} s wall, {args.patients / total:.2f} patients/s; "
        f"{cpu:.1f} CPU s ({cpu / args.patients:.3f} per patient)"
    )

    if args.split_cases > 0:
        start = time.perf_counter()
        atlas = load_atlas()
        load = time.perf_counter() - start
        plans = plan_cohort(args.split_cases, sites[:1], args.seed, 0)
        profile = site_scanner(args.seed, sites[0])
        start = time.perf_counter()
        for plan in plans:
            synthesize_case(atlas, shape, profile, patient_rng(args.seed, plan.index))
        synth = (time.perf_counter() - start) / len(plans)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            _write_cases(Path(tmp), plans, atlas, shape, {sites[0]: profile}, args.seed)
            both = (time.perf_counter() - start) / len(plans)
        print(
            f"one core: atlas load {load:.2f} s; per case synthesis {synth:.3f} s, "
            f"writing {max(both - synth, 0.0):.3f} s (3 x .nii.gz), "
            f"voxels {int(np.prod(shape))}"
        )


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
