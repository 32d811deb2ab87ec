"""Train-step time of Dy-CNN U-Nets relative to a static U-Net of equal width, side by side.

One train step = forward + BCE loss + backward + an Adam step by fedll's optimiser
(:func:`fedll.training.train.make_optimizer`), + the temperature schedule for dynamic models. For
each (threads, size, batch) the models' steps are interleaved, the order rotating every repetition,
and the medians are compared, so machine load drifts hit all models alike. Also prints
parameter counts and forward FLOPs per sample (FlopCounterMode).

    .venv/bin/python benchmarks/bench_models.py                       # the full table
    .venv/bin/python benchmarks/bench_models.py --sizes 64 --batches 8 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fedll.config.schema import TrainingConfig
from fedll.models import advance_schedule, build_model, count_parameters
from fedll.training.train import make_optimizer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dycnn", "dycnn-grouped"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def train_step(model: torch.nn.Module) -> Callable[[torch.Tensor], None]:
    """A closure running one Adam train step of ``model`` on a (B, 1, H, W) batch."""
    optimiser = make_optimizer(model, TrainingConfig(optimizer="adam", lr=1e-3))

    def step(x: torch.Tensor) -> None:
        target = (x > 1.0).float()
        optimiser.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(x), target)
        loss.backward()
        optimiser.step()
        advance_schedule(model)

    return step


def forward_flops(model: torch.nn.Module, size: int) -> int:
    """Forward FLOPs of one (1, 1, size, size) sample."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, size, size))
    model.train()
    return counter.get_total_flops()


def time_models(
    names: list[str], args: argparse.Namespace, size: int, batch: int
) -> dict[str, list[float]]:
    """Seconds per train step of each model, one per repetition, measured interleaved."""
    steps = {}
    for name in names:
        model = build_model(name, seed=args.seed, depth=args.depth, base_width=args.base_width)
        steps[name] = train_step(model)
    x = torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(args.seed))
    for _ in range(args.warmup):
        for name in names:
            steps[name](x)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(args.repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            start = time.perf_counter()
            steps[name](x)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    args = parse_args()
    names = ["static", *args.models]
    print(
        f"torch {torch.__version__}, depth {args.depth}, base width {args.base_width}, "
        f"{args.repeats} interleaved repeats; ms: median step time; "
        "ratio: median of the per-repetition ratios to static"
    )
    print("\nmodel            parameters  " + "  ".join(f"GFLOP/sample@{s}" for s in args.sizes))
    for name in names:
        model = build_model(name, seed=args.seed, depth=args.depth, base_width=args.base_width)
        flops = "  ".join(f"{forward_flops(model, s) / 1e9:16.3f}" for s in args.sizes)
        print(f"{name:15s} {count_parameters(model):11d}  {flops}")
    header = f"\n{'threads':>7} {'size':>5} {'batch':>5} {'static ms':>10}"
    for name in args.models:
        header += f" {name + ' ms':>18} {'ratio':>6}"
    print(header)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for size in args.sizes:
            for batch in args.batches:
                times = time_models(names, args, size, batch)
                static = times["static"]
                row = f"{threads:7d} {size:5d} {batch:5d} {statistics.median(static) * 1e3:10.1f}"
                for name in args.models:
                    # the median of per-repetition ratios: neighbours in time share the load
                    ratio = statistics.median(
                        d / s for d, s in zip(times[name], static, strict=True)
                    )
                    row += f" {statistics.median(times[name]) * 1e3:18.1f} {ratio:6.2f}"
                print(row, flush=True)


if __name__ == "__main__":
    main()
