"""Federation overhead, sweep speed-up and peak memory, measured side by side.

1. Round overhead: one trial through the in-process Flower grid (ServerApp + ClientApp,
   messages, aggregation) against a bare torch loop doing the same local training and the
   same per-round test evaluation. Target: <= 1.10x.
2. Sweep speed-up: N trials as Ray tasks (1 CPU each) against the same trials one after
   another in one process, as a share of the concurrent-trials bound measured in the same
   run (W workers x the trials' seconds alone / their seconds W at a time, from the seals).
   Target: >= 0.95 of the bound (on 2 cores the bound is ~1.66x, not 2).
3. Peak memory of a whole `fedll run` (driver + Ray + workers, summed RSS sampled every
   0.2 s). Targets: quickstart < 3 GiB, paper < 8 GiB.

    python benchmarks/bench_federation.py [--scenario scenarios/quickstart.yaml] [--repeats 3]
        [--memory scenarios/quickstart.yaml ...]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from fedll.config import dump_scenario, expand_trials, load_scenario
from fedll.data.prepare import prepare_cohort
from fedll.evaluation.evaluate import evaluate_cases
from fedll.federation.stream import build_stream, counted_holdings
from fedll.models import build_model
from fedll.run.execute import run_trial
from fedll.run.sweep import SweepOptions, run_sweep
from fedll.training.train import train_local


def prepare_run(scenario_path: Path, out: Path, overrides: list[str]) -> Path:
    scenario = load_scenario(scenario_path, overrides)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenario.yaml").write_text(dump_scenario(scenario))
    prepare_cohort(scenario).write(out / "cohort.json")
    return out


def bare_loop(run_dir: Path, trial_index: int) -> float:
    """The same training and evaluation as one trial, without Flower: seconds."""
    from fedll.data.prepare import PreparedCohort

    torch.set_num_threads(1)
    scenario = load_scenario(run_dir / "scenario.yaml")
    trial = expand_trials(scenario)[trial_index]
    prepared = PreparedCohort.read(run_dir / "cohort.json")
    start = time.perf_counter()
    holdings = counted_holdings([(s.name, s.modality, s.patients) for s in scenario.sites])
    stream = build_stream(
        holdings,
        trial.ordering,
        trial.arrival_batch,
        trial.seed,
        trial.arrivals_per_round,
    )
    spec = scenario.models[trial.model]
    torch.manual_seed(trial.seed)
    model = build_model(spec.name, **spec.kwargs())
    test = {m: prepared.test_slices(m) for m in prepared.test}
    site_cases = {name: prepared.site_slices(name) for name in prepared.sites}
    seen = dict.fromkeys(site_cases, 0)
    for cases in test.values():
        evaluate_cases(model, cases, collect_attention=True)
    for rnd in stream:
        for arrival in rnd.arrivals:
            a, b = seen[arrival.site], seen[arrival.site] + len(arrival.patients)
            seen[arrival.site] = b
            cases = site_cases[arrival.site][a:b]
            train_local(
                model,
                np.concatenate([c.images for c in cases]),
                np.concatenate([c.masks for c in cases]),
                scenario.training,
                seed=rnd.index,
            )
        for cases in test.values():
            evaluate_cases(model, cases, collect_attention=True)
    return time.perf_counter() - start


def federated(run_dir: Path, trial_index: int) -> float:
    clear_trials(run_dir)
    start = time.perf_counter()
    run_trial(run_dir, trial_index, threads=1)
    return time.perf_counter() - start


def round_overhead(run_dir: Path, repeats: int) -> None:
    fed, bare = [], []
    for _ in range(repeats):  # alternate, so drift in machine load hits both
        fed.append(federated(run_dir, 0))
        bare.append(bare_loop(run_dir, 0))
    f, b = statistics.median(fed), statistics.median(bare)
    print(
        f"round overhead: in-process federation {f:.2f} s vs bare torch loop {b:.2f} s "
        f"-> {f / b:.3f}x (target <= 1.10x; medians of {repeats})"
    )


def clear_trials(run_dir: Path) -> None:
    """Remove every trial's files (its results and seal in ``trials/``, its kept model in
    ``models/``), so that the next sweep runs every trial afresh."""
    for folder in ("trials", "models"):
        shutil.rmtree(run_dir / folder, ignore_errors=True)


def seal_seconds(run_dir: Path, trials) -> float:
    """The seconds the trials ran, summed from their seals (``wall_s``)."""
    from fedll.run.store import trial_wall_s

    seconds = [trial_wall_s(run_dir, t.trial_id) for t in trials]
    assert all(s is not None for s in seconds), "a trial's seal holds no wall_s"
    return float(sum(seconds))


def sweep_speedup(run_dir: Path) -> None:
    """The sweep's speed-up over one trial after another, against the bound the machine sets:
    with W workers the sweep can at best be W x (the trials' seconds alone / their seconds
    when W run at once), both summed from the seals of the same trials in this run (two
    trials at once on 2 cores each run slower: shared caches, memory bandwidth, clocks).
    Target: speed-up >= 0.95 of that bound."""
    import ray

    from fedll.run.backends import pool_size
    from fedll.run.ray_cluster import ray_init_kwargs

    trials = expand_trials(load_scenario(run_dir / "scenario.yaml"))
    clear_trials(run_dir)
    start = time.perf_counter()
    run_sweep(run_dir, SweepOptions(backend="local"))
    sequential = time.perf_counter() - start
    alone = seal_seconds(run_dir, trials)
    clear_trials(run_dir)
    options = SweepOptions(backend="ray", cpus_per_trial=1)
    start = time.perf_counter()
    ray.init(**ray_init_kwargs(options))  # run_sweep uses the Ray it finds
    started = time.perf_counter() - start
    try:
        workers = pool_size(len(trials), 1, 0.0, ray.cluster_resources())
        summary = run_sweep(run_dir, options)
    finally:
        ray.shutdown()
    parallel = time.perf_counter() - start
    assert not summary.failed, summary.failed
    together = seal_seconds(run_dir, trials)
    bound = workers * alone / together
    speedup = sequential / parallel
    print(
        f"sweep of {len(trials)} trials: sequential {sequential:.1f} s (trials {alone:.1f} s "
        f"alone), Ray ({workers} workers) {parallel:.1f} s of which {started:.1f} s Ray start "
        f"(trials {together:.1f} s together) -> speed-up {speedup:.2f}x; concurrent-trials "
        f"bound {bound:.2f}x; {speedup / bound:.2f} of the bound (target >= 0.95), "
        f"{sequential / (parallel - started) / bound:.2f} without the one-off Ray start"
    )


def peak_memory(scenario: Path, out: Path) -> None:
    """Run `fedll run` in a subprocess; sample the summed RSS of its whole process tree."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedll.cli", "run", str(scenario), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    peak, root = 0, psutil.Process(proc.pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                total = sum(p.memory_info().rss for p in procs if p.is_running())
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    thread.start()
    _, err = proc.communicate()
    done.set()
    thread.join()
    status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {err.decode()[-300:]}"
    print(
        f"peak memory of `fedll run {scenario}`: {peak / 2**30:.2f} GiB over "
        f"{time.perf_counter() - start:.0f} s ({status})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=Path("scenarios/quickstart.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", type=Path, nargs="*", default=[])
    parser.add_argument("--skip", nargs="*", default=[], choices=["overhead", "sweep"])
    parser.add_argument(
        "--all-trials", action="store_true", help="time the scenario's whole grid, not 4 trials"
    )
    args = parser.parse_args()
    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.WARNING)  # Flower logs every round at INFO
    with tempfile.TemporaryDirectory() as tmp:
        # a 4-trial slice of the scenario keeps the benchmark short
        subset = ["stream.ordering=[alternating]", "stream.arrival_batch=[2, 4]"]
        run_dir = prepare_run(args.scenario, Path(tmp) / "run", [] if args.all_trials else subset)
        if "overhead" not in args.skip:
            round_overhead(run_dir, args.repeats)
        if "sweep" not in args.skip:
            sweep_speedup(run_dir)
        for scenario in args.memory:
            peak_memory(scenario, Path(tmp) / f"mem-{scenario.stem}")


if __name__ == "__main__":
    main()
