"""The same trial on the CPU and on the accelerator: Dice agreement and speed-up, one run.

Runs one trial of a scenario (default: the quickstart's first Dy-CNN trial, at a larger slice
size and width so the GPU has work) in this process with ``execution.device`` cpu, then cuda
(and, with ``--precision bf16``, cuda in bf16), each from the same in-memory cohort, and
prints the wall time of each, the speed-up and the largest per-case Dice difference over every
round and modality. Needs a CUDA device for the second half; on a CPU-only machine it says so
and exits 0 after the CPU run.

    python benchmarks/bench_device.py [--scenario scenarios/quickstart.yaml] [--trial 1]
        [--set slices.size=128 --set models.dycnn.base_width=16] [--precision fp32]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from fedll.config import expand_trials, load_scenario
from fedll.data.arrays import CohortArrays
from fedll.data.prepare import prepare_cohort
from fedll.run.execute import execute_task
from fedll.run.trial_task import TrialTask

DEFAULT_SETS = [
    "slices.size=96",
    "models.dycnn.base_width=16",
    "models.static.base_width=16",
    "training.epochs=2",
]


def one(task: TrialTask, cohort: CohortArrays) -> tuple[float, np.ndarray]:
    if task.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    done = execute_task(task, cohort)
    if task.device.startswith("cuda"):
        torch.cuda.synchronize()
    frame = done.outcome.results.frames()[0].sort_values(["round", "modality", "case"])
    return time.perf_counter() - start, frame["dice"].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=Path("scenarios/quickstart.yaml"))
    parser.add_argument("--trial", type=int, default=1)
    parser.add_argument("--set", dest="sets", action="append", default=None)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    sets = DEFAULT_SETS if args.sets is None else args.sets
    scenario = load_scenario(args.scenario, sets)
    trial = expand_trials(scenario)[args.trial]
    cohort = CohortArrays.load(prepare_cohort(scenario))
    print(f"trial {trial.trial_id}, {' '.join(sets)}")
    cpu_s, cpu_dice = one(TrialTask(scenario, args.trial, args.threads, "cpu"), cohort)
    print(f"cpu  fp32: {cpu_s:7.1f} s")
    if not torch.cuda.is_available():
        print("no CUDA device here: the accelerator half was not run")
        return
    gpu_scenario = load_scenario(args.scenario, [*sets, f"training.precision={args.precision}"])
    warm = TrialTask(gpu_scenario, args.trial, args.threads, "cuda")
    one(warm, cohort)  # CUDA context, cuDNN autotuning and kernel caches out of the timing
    gpu_s, gpu_dice = one(warm, cohort)
    name = torch.cuda.get_device_name()
    print(f"cuda {args.precision}: {gpu_s:7.1f} s on {name}")
    print(f"speed-up: {cpu_s / gpu_s:.2f}x")
    print(f"largest per-case Dice difference: {np.max(np.abs(cpu_dice - gpu_dice)):.4f}")
    print(f"mean Dice cpu {cpu_dice.mean():.4f}, cuda {gpu_dice.mean():.4f}")


if __name__ == "__main__":
    main()
