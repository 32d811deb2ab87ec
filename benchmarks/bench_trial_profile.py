"""Where a trial's time goes: evaluation, training and the rest, under cProfile.

Runs the chosen trials of a scenario in this process (as a sweep's worker runs one: the
in-process Flower grid, ``threads`` torch threads) under cProfile and splits each trial's
time into evaluation after every round (:func:`~fedll.evaluation.evaluate.evaluate_cases`; of which
the metrics, ``case_metrics``), local training (``train_local``) and the rest (Flower's
messages, the strategy, the lifelong layer, result rows). The target of issue 32: evaluation
<= 30 % of a paper-scale trial. cProfile adds a little to every Python call, so the shares
count, not the seconds.

    .venv/bin/python benchmarks/bench_trial_profile.py [--scenario scenarios/paper.yaml]
        [--trials 0 20] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from fedll.config import expand_trials, load_scenario

PARTS = {
    "evaluation": ("evaluate_cases",),
    "of which metrics": ("case_metrics",),
    "training": ("train_local",),
}
"""Each part: the functions whose cumulative time it is (matched by name, so the benchmark
outlives a move of their module)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="scenarios/paper.yaml")
    parser.add_argument("--trials", nargs="+", type=int, default=[0, 20])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    return parser.parse_args()


def cumulative(stats: pstats.Stats, names: tuple[str, ...]) -> float:
    """Cumulative seconds of the functions called ``names`` (outermost calls only: a
    function's recursion or a same-named callee is not counted twice)."""
    total = 0.0
    for (_, _, function), (_, _, _, cum, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if function in names and not any(caller[2] in names for caller in callers):
            total += cum
    return total


def main() -> None:
    args = parse_args()
    # imported here: bench_federation's helper writes the run directory a trial reads
    from bench_federation import prepare_run

    from fedll.run.execute import run_trial

    scenario = load_scenario(Path(args.scenario), args.overrides)
    trials = expand_trials(scenario)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = prepare_run(Path(args.scenario), Path(tmp) / "run", args.overrides)
        print(f"{scenario.name}: trials {args.trials}, {args.threads} thread(s), cProfile")
        print(f"{'trial':50s} {'wall s':>7s} " + " ".join(f"{p:>17s}" for p in PARTS)
              + f" {'rest':>9s}")  # fmt: skip
        for index in args.trials:
            profiler = cProfile.Profile()
            start = time.perf_counter()
            profiler.runcall(run_trial, run_dir, index, args.threads)
            wall = time.perf_counter() - start
            stats = pstats.Stats(profiler)
            seconds = {part: cumulative(stats, names) for part, names in PARTS.items()}
            rest = wall - seconds["evaluation"] - seconds["training"]
            cells = " ".join(f"{s:7.1f} ({s / wall:5.1%})" for s in seconds.values())
            print(f"{trials[index].trial_id[:50]:50s} {wall:7.1f} {cells} {rest / wall:9.1%}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
