"""A deployed trial's rounds on 127.0.0.1, and fedll's share of each ClientApp process.

1. Rounds: an insecure SuperLink and one SuperNode per site (``fedll site --insecure``), then
   ``flwr run`` of one trial of the scenario (docs/tutorials/deploy.md, without TLS).
   The seconds of each round are taken from the ServerApp's streamed log, as it arrives.
2. fedll's share: a SuperNode starts one ClientApp process per message. The same work is
   timed in fresh processes, phase by phase: the interpreter, Flower's own ClientApp
   runtime, importing fedll's ClientApp (what the process loads from the app), reading the
   site (its data folder and the slice cache) for one arrival, building the model, and the
   local training itself (the work a site is there for). Medians of ``--repeats``.

    .venv/bin/python benchmarks/bench_deploy.py [--scenario scenarios/quickstart.yaml]
        [--trial 0] [--repeats 5] [--skip rounds]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import tomllib

from fedll.config import expand_trials, load_scenario
from fedll.data.prepare import prepare_cohort
from fedll.deploy.site_data import write_site_manifests

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TIMEOUT = 900.0

# One ClientApp process's fedll work, phase by phase (run in a fresh interpreter: argv[1] is
# a JSON of the node config, the scenario path and the trial's first arrival).
PHASES = r"""
import json, sys, time
t0 = time.perf_counter()
import flwr.clientapp, flwr.supernode.runtime.run_clientapp  # Flower's ClientApp runtime
t1 = time.perf_counter()
import sites.client_app  # what Flower's loader imports from the app
t2 = time.perf_counter()
import numpy as np
import torch
from fedll.config import load_scenario
from fedll.data.site import resolve_site
from fedll.models import build_model
from fedll.training.train import train_local
job = json.loads(sys.argv[1])
scenario = load_scenario(job["scenario"])
torch.set_num_threads(1)
t3 = time.perf_counter()
site = resolve_site(job["node_config"], {})
cases = site.cases(scenario.slices, list(range(job["patients"])))
t4 = time.perf_counter()
spec = scenario.models[job["model"]]
model = build_model(spec.name, **spec.kwargs())
model.load_state_dict(build_model(spec.name, **spec.kwargs()).state_dict())
t5 = time.perf_counter()
images = np.concatenate([c.images for c in cases])
masks = np.concatenate([c.masks for c in cases])
train_local(model, images, masks, scenario.training, 0)
t6 = time.perf_counter()
print(json.dumps({"flower runtime": t1 - t0, "fedll ClientApp import": t2 - t1,
                  "site: data folder + slice cache": t4 - t3, "model build + load": t5 - t4,
                  "local training": t6 - t5}))
"""


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def copy_app(dest: Path) -> Path:
    """The files ``[tool.flwr.app] fab-include`` names (``flwr run .`` at the repository root
    would walk the virtual environment too)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    tops = {pattern.split("/")[0] for pattern in config["tool"]["flwr"]["app"]["fab-include"]}
    dest.mkdir()
    for top in sorted(tops | {"pyproject.toml"}):
        source = REPO / top
        if source.is_dir():
            shutil.copytree(source, dest / top, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            shutil.copy2(source, dest / top)
    return dest


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} (exit code {proc.poll()})")


def stop(procs: list[subprocess.Popen]) -> None:
    """End what was started and everything it spawned (flower-superexec, flwr-clientapp), by
    pid: TERM, then KILL."""
    found: dict[int, psutil.Process] = {}
    for proc in procs:
        try:
            parent = psutil.Process(proc.pid)
            found.update({p.pid: p for p in [parent, *parent.children(recursive=True)]})
        except psutil.NoSuchProcess:
            continue
    for p in found.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(list(found.values()), timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


def deployed_rounds(scenario_path: Path, trial: int, sites: dict[str, Path], root: Path) -> None:
    scenario = load_scenario(scenario_path)
    home = root / "flwr-home"
    home.mkdir()
    link_port, *runtime_ports = free_ports(1 + len(sites))
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "FLWR_"))}
    env.update(
        {
            "FLWR_HOME": str(home),
            "PATH": f"{BIN}:{env.get('PATH', '')}",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }
    )
    logs = root / "logs"
    logs.mkdir()
    started: list[subprocess.Popen] = []

    def spawn(name: str, argv: list[str], **kwargs) -> subprocess.Popen:
        out = (logs / f"{name}.log").open("w")
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, **kwargs)
        started.append(proc)
        return proc

    try:
        link = spawn(
            "superlink",
            [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1"]
            + ["--port", str(link_port), "--disable-runtime-dependency-installation"],
        )
        wait_for_port(link_port, link)
        by_name = {s.name: s for s in scenario.sites}
        for (name, data_dir), port in zip(sites.items(), runtime_ports, strict=True):
            argv = [str(BIN / "fedll"), "site", "--site", name]
            argv += ["--modality", by_name[name].modality, "--data-dir", str(data_dir)]
            argv += ["--superlink", f"127.0.0.1:{link_port}", "--insecure"]
            argv += ["--runtime-port", str(port), "--cache-dir", str(root / "cache")]
            spawn(name, argv)
        app = copy_app(root / "app")
        run_config = f'scenario="{scenario_path}" trial={trial} run-dir="{root / "run"}" threads=1'
        start = time.monotonic()
        run = subprocess.Popen(
            [str(BIN / "flwr"), "run", ".", "bench", "--stream", "--run-config", run_config],
            cwd=app,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(run)
        marks: list[tuple[int, float]] = []
        lines = []
        assert run.stdout is not None
        for line in run.stdout:
            lines.append(line)
            if found := re.search(r"\[ROUND (\d+)", line):
                marks.append((int(found.group(1)), time.monotonic() - start))
            if time.monotonic() - start > TIMEOUT:
                break
        run.wait(timeout=60)
        total = time.monotonic() - start
    finally:
        stop(started)
    if run.returncode != 0 or not marks:
        tail = "".join(lines[-40:])
        raise SystemExit(f"flwr run failed (exit {run.returncode}):\n{tail}")
    first = marks[0][1]
    durations = [b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)]
    last = total - marks[-1][1]  # the last round, its evaluation and the run's end
    print(
        f"deployed trial {trial}: flwr run {total:.1f} s; {first:.1f} s to round 1 "
        f"(run start, query.meta, round 0's evaluation); {len(marks)} rounds: "
        f"median {statistics.median([*durations, last]):.1f} s "
        f"(each: {', '.join(f'{d:.1f}' for d in [*durations, last])})"
    )


def client_phases(scenario_path: Path, trial: int, sites: dict[str, Path], repeats: int) -> None:
    scenario = load_scenario(scenario_path)
    chosen = expand_trials(scenario)[trial]
    name, data_dir = next(iter(sites.items()))
    by_name = {s.name: s for s in scenario.sites}
    job = {
        "scenario": str(scenario_path),
        "model": chosen.model,
        "patients": chosen.arrival_batch,
        "node_config": {
            "site": name,
            "modality": by_name[name].modality,
            "data-dir": str(data_dir),
            "cache-dir": str(data_dir.parent / "cache"),
        },
    }
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    interpreter, runs = [], []
    for _ in range(repeats + 1):  # the first run fills the slice cache
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
        interpreter.append(time.perf_counter() - start)
        done = subprocess.run(
            [sys.executable, "-c", PHASES, json.dumps(job)],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    phases = {"interpreter start": statistics.median(interpreter[1:])}
    phases |= {k: statistics.median(r[k] for r in runs[1:]) for k in runs[0]}
    total = sum(phases.values())
    fedll = sum(phases[k] for k in list(phases)[2:5])
    print(
        f"one train message's ClientApp process ({name}, {job['patients']} patients, "
        f"model {chosen.model}; medians of {repeats}):"
    )
    for key, seconds in phases.items():
        print(f"  {key:<34} {seconds:6.2f} s  {seconds / total:5.1%}")
    print(
        f"  fedll's share (import, site, model): {fedll:.2f} s of {total:.2f} s "
        f"({fedll / total:.1%})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=REPO / "scenarios/quickstart.yaml")
    parser.add_argument("--trial", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=["rounds", "phases"])
    args = parser.parse_args()
    scenario_path = args.scenario.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepared = prepare_cohort(load_scenario(scenario_path))
        manifests = write_site_manifests(prepared, root / "sites")
        sites = {site: path.parent for site, path in manifests.items()}
        if "phases" not in args.skip:
            client_phases(scenario_path, args.trial, sites, args.repeats)
        if "rounds" not in args.skip:
            deployed_rounds(scenario_path, args.trial, sites, root)


if __name__ == "__main__":
    main()
