"""Train-step time of Dy-CNN U-Nets relative to a static U-Net of equal width, side by side.

One train step = forward + BCE loss + backward + an Adam step by fedll's optimiser
(:func:`fedll.training.train.make_optimizer`), + the temperature schedule for dynamic models. For
each (threads, size, batch) the models' steps are interleaved, the order rotating every repetition,
and the medians are compared, so machine load drifts hit all models alike. Also prints
parameter counts and forward FLOPs per sample (FlopCounterMode).

Each table is measured in every ``--precisions`` (default: fp32 and the precision a trial's
``auto`` resolves to here: bf16 autocast where the CPU has native bf16), the forward and loss
under fedll's autocast as :func:`fedll.training.train.train_local` runs them. ``--layers`` adds what
bounds the ratio: one dynamic convolution (the per-sample grouped convolution fedll runs,
kernels mixed from a bank of K) against one static convolution, forward + backward, at each
layer shape of the U-Net, and the other formulations of the same arithmetic that were tried
(channels-last, im2col + batched matmul, K dense convolutions mixed afterwards).

    .venv/bin/python benchmarks/bench_models.py                       # the full table
    .venv/bin/python benchmarks/bench_models.py --sizes 64 --batches 8 --repeats 5 --layers
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
from fedll.run.device import Precision, autocast, resolve_precision
from fedll.training.train import make_optimizer

CPU = torch.device("cpu")


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
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=sorted({"fp32", resolve_precision("auto", CPU)}),
        help="fp32, bf16 (default: fp32 and what auto resolves to here)",
    )
    parser.add_argument("--layers", action="store_true", help="also time single layers")
    return parser.parse_args()


def train_step(model: torch.nn.Module, precision: Precision) -> Callable[[torch.Tensor], None]:
    """A closure running one Adam train step of ``model`` on a (B, 1, H, W) batch, the forward
    and the loss under ``precision``'s autocast."""
    optimiser = make_optimizer(model, TrainingConfig(optimizer="adam", lr=1e-3))

    def step(x: torch.Tensor) -> None:
        target = (x > 1.0).float()
        optimiser.zero_grad(set_to_none=True)
        with autocast(CPU, precision):
            loss = F.binary_cross_entropy_with_logits(model(x).float(), target)
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
    names: list[str], args: argparse.Namespace, size: int, batch: int, precision: Precision
) -> dict[str, list[float]]:
    """Seconds per train step of each model, one per repetition, measured interleaved."""
    steps = {}
    for name in names:
        model = build_model(name, seed=args.seed, depth=args.depth, base_width=args.base_width)
        steps[name] = train_step(model, precision)
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
    header = f"\n{'precision':>9} {'threads':>7} {'size':>5} {'batch':>5} {'static ms':>10}"
    for name in args.models:
        header += f" {name + ' ms':>18} {'ratio':>6}"
    print(header)
    for precision in args.precisions:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for size in args.sizes:
                for batch in args.batches:
                    times = time_models(names, args, size, batch, precision)
                    row = table_row(args.models, times, precision, threads, size, batch)
                    print(row, flush=True)
    if args.layers:
        for precision in args.precisions:
            time_layers(args, precision)


def table_row(
    models: list[str],
    times: dict[str, list[float]],
    precision: str,
    threads: int,
    size: int,
    batch: int,
) -> str:
    static = times["static"]
    row = f"{precision:>9} {threads:7d} {size:5d} {batch:5d}"
    row += f" {statistics.median(static) * 1e3:10.1f}"
    for name in models:
        # the median of per-repetition ratios: neighbours in time share the load
        ratio = statistics.median(d / s for d, s in zip(times[name], static, strict=True))
        row += f" {statistics.median(times[name]) * 1e3:18.1f} {ratio:6.2f}"
    return row


def time_layers(args: argparse.Namespace, precision: Precision, kernels: int = 4) -> None:
    """One 3x3 layer, forward + backward, at each level of the U-Net (channels
    ``base_width * 2**level``, side ``size / 2**level``): the dynamic formulations' times as
    ratios to the static convolution's, 1 thread."""
    torch.set_num_threads(1)
    print(
        f"\none layer, forward + backward, {precision}, 1 thread, K = {kernels}: ratio to the "
        "static convolution (grouped: what fedll runs)"
    )
    print(f"{'batch':>5} {'channels':>8} {'side':>5} {'static ms':>10} {'grouped':>8} "
          f"{'grouped-cl':>10} {'im2col-bmm':>10} {'dense-K':>8}")  # fmt: skip
    for batch in args.batches:
        for size in args.sizes:
            for level in range(args.depth + 1):
                channels, side = args.base_width * 2**level, max(size // 2**level, 1)
                runs = layer_runs(batch, channels, side, kernels, precision, args.seed)
                times = {
                    name: statistics.median(_seconds(run, args.repeats))
                    for name, run in runs.items()
                }
                ratios = [times[n] / times["static"] for n in list(runs)[1:]]
                print(f"{batch:5d} {channels:8d} {side:5d} {times['static'] * 1e3:10.2f} "
                      f"{ratios[0]:8.2f} {ratios[1]:10.2f} {ratios[2]:10.2f} {ratios[3]:8.2f}",
                      flush=True)  # fmt: skip


def _seconds(run: Callable[[], None], repeats: int) -> list[float]:
    run()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        out.append(time.perf_counter() - start)
    return out


def layer_runs(
    batch: int, channels: int, side: int, kernels: int, precision: Precision, seed: int
) -> dict[str, Callable[[], None]]:
    """Forward + backward of one layer in each formulation (the same arithmetic in exact
    numbers; the dynamic ones mix per-sample kernels from a bank of ``kernels``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, side, side, generator=g, requires_grad=True)
    weight = torch.randn(channels, channels, 3, 3, generator=g, requires_grad=True)
    bank = torch.randn(kernels, channels * channels * 9, generator=g, requires_grad=True)
    attention = torch.softmax(torch.randn(batch, kernels, generator=g), -1).requires_grad_()

    def grouped(layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        mixed = (attention @ bank).view(batch * channels, channels, 3, 3)
        folded = x.reshape(1, batch * channels, side, side).contiguous(memory_format=layout)
        return F.conv2d(folded, mixed, padding=1, groups=batch)

    def im2col_bmm() -> torch.Tensor:
        mixed = (attention @ bank).view(batch, channels, channels * 9)
        return torch.bmm(mixed, F.unfold(x, 3, padding=1))

    def dense_k() -> torch.Tensor:
        every = F.conv2d(x, bank.view(kernels * channels, channels, 3, 3), padding=1)
        every = every.view(batch, kernels, channels, side, side)
        return (every * attention.view(batch, kernels, 1, 1, 1).to(every.dtype)).sum(1)

    forms: dict[str, Callable[[], torch.Tensor]] = {
        "static": lambda: F.conv2d(x, weight, padding=1),
        "grouped": grouped,
        "grouped-cl": lambda: grouped(torch.channels_last),
        "im2col-bmm": im2col_bmm,
        "dense-K": dense_k,
    }

    def backward(form: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with autocast(CPU, precision):
                out = form()
            out.float().sum().backward()

        return run

    return {name: backward(form) for name, form in forms.items()}


if __name__ == "__main__":
    main()
