"""fedll's arithmetic levers, measured side by side on one machine: evaluation (the whole test
set of a scenario, as after every round) and local training (one site's arrival), each in fp32
and in the precision ``auto`` resolves to here, for every model of the scenario; plus
``torch.compile`` of the evaluation forward (its compile time counted apart).

Evaluation in bf16 also lays the convolutions out channels-last and runs 128 slices a batch
(:func:`fedll.evaluation.evaluate.evaluate_cases`); the per-case Dice of the two arithmetics is
compared on a model trained on one arrival first (their largest difference; what a change of
arithmetic does to a whole, chaotic trial is for the equivalence check over seeds,
benchmarks/equivalence.py). Timings are medians of interleaved repeats, ratios per repeat.

    .venv/bin/python benchmarks/bench_arithmetic.py [--scenario scenarios/quickstart.yaml]
        [--repeats 5] [--threads 1] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from fedll.config import load_scenario
from fedll.data.prepare import prepare_cohort
from fedll.evaluation.evaluate import evaluate_cases
from fedll.models import build_model
from fedll.run.device import arithmetic, resolve_precision
from fedll.training.train import train_local


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="scenarios/quickstart.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    return parser.parse_args()


def interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each run per repeat, the runs interleaved (one warm-up each first)."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for rep in range(repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def ratio(slow: list[float], fast: list[float]) -> float:
    return statistics.median(s / f for s, f in zip(slow, fast, strict=True))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    scenario = load_scenario(args.scenario)
    prepared = prepare_cohort(scenario)
    test = {m: prepared.test_slices(m) for m in prepared.test}
    site = scenario.sites[0].name
    arrival = prepared.site_slices(site)[: scenario.stream.arrival_batch[0]]
    images = np.concatenate([c.images for c in arrival])
    masks = np.concatenate([c.masks for c in arrival])
    fast = resolve_precision("auto", torch.device("cpu"))
    slices = sum(len(c.images) for cases in test.values() for c in cases)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {arithmetic(torch.device('cpu'))}; "
        f"auto -> {fast}; {scenario.name}: evaluation of {slices} test slices, training on "
        f"{len(images)} slices of {site} ({scenario.training.epochs} epochs, batch "
        f"{scenario.training.batch_size}); medians of {args.repeats} interleaved repeats"
    )
    print(f"\n{'model':22s} {'part':10s} {'fp32 s':>8s} {fast + ' s':>8s} {'speed-up':>8s} "
          f"{'max |dDice|':>12s}")  # fmt: skip
    for name, spec in scenario.models.items():
        torch.manual_seed(0)
        model = build_model(spec.name, **spec.kwargs())
        # trained first (fp32, one arrival) so that the Dice compared are not of empty masks
        exact = scenario.training.model_copy(update={"precision": "fp32"})
        train_local(model, images, masks, exact, seed=0)

        def evaluate(precision: str, model: torch.nn.Module = model) -> list[float]:
            return [d for cases in test.values()
                    for d in evaluate_cases(model, cases, precision=precision).dice]  # fmt: skip

        runs = {p: (lambda p=p: evaluate(p)) for p in ("fp32", fast)}
        times = interleaved(runs, args.repeats)
        diff = np.max(np.abs(np.subtract(evaluate("fp32"), evaluate(fast))))
        print(f"{name:22s} {'evaluation':10s} {statistics.median(times['fp32']):8.2f} "
              f"{statistics.median(times[fast]):8.2f} {ratio(times['fp32'], times[fast]):8.2f} "
              f"{diff:12.4f}")  # fmt: skip
        state = {k: v.clone() for k, v in model.state_dict().items()}

        def train(precision: str, model: torch.nn.Module = model, state: dict = state) -> None:
            model.load_state_dict(state)
            cfg = scenario.training.model_copy(update={"precision": precision})
            train_local(model, images, masks, cfg, seed=0)

        runs = {p: (lambda p=p: train(p)) for p in ("fp32", fast)}
        times = interleaved(runs, args.repeats)
        print(
            f"{name:22s} {'training':10s} {statistics.median(times['fp32']):8.2f} "
            f"{statistics.median(times[fast]):8.2f} {ratio(times['fp32'], times[fast]):8.2f}"
        )
        if args.compile:
            compile_forward(name, model, test, fast, args.repeats)


def compile_forward(name: str, model: torch.nn.Module, test: dict, fast: str, repeats: int) -> None:
    """``torch.compile`` of the evaluation forward (inductor), fp32 and ``fast``: its compile
    time (first call) and its speed against eager."""
    cases = [c for cs in test.values() for c in cs]
    batch = torch.tensor(np.concatenate([c.images for c in cases])[:128], dtype=torch.float32)
    model.eval()
    compiled = torch.compile(model)
    for precision in ("fp32", fast):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32

        def forward(
            m: torch.nn.Module, dtype: torch.dtype = dtype, on: bool = precision != "fp32"
        ) -> None:
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=on):
                m(batch)

        start = time.perf_counter()
        forward(compiled)
        cost = time.perf_counter() - start
        times = interleaved({"eager": lambda f=forward: f(model),
                             "compiled": lambda f=forward: f(compiled)}, repeats)  # fmt: skip
        eager_s, compiled_s = (statistics.median(times[k]) for k in ("eager", "compiled"))
        print(
            f"{name:22s} {'compile ' + precision:10s} eager {eager_s:.3f} s, compiled "
            f"{compiled_s:.3f} s per 128 slices ({ratio(times['eager'], times['compiled']):.2f}x"
            f"), first call {cost:.1f} s"
        )


if __name__ == "__main__":
    main()
