"""The same ServerApp and ClientApp under ``flwr run`` (Flower's Simulation Engine) give the
same results as the in-process run of a sweep (``fedll.run.sweep.run_trial``) for the same seed,
with FedAvg, and with SCAFFOLD and Ditto, whose sites keep state in their Flower context
(control variates, personalised models) and send extra records (Ditto's personalised models
are evaluated by the ServerApp).

One tiny trial (2 sites, 2 patients each, 4 rounds) runs twice from the same prepared run
directory: in this process through ``InProcessGrid``, and with ``flwr run . local --stream``
against a local SuperLink (``address = ":local:"``) that ``flwr`` starts detached, on free
ports, with a private ``FLWR_HOME`` and Ray temp dir. The fixture finds every process Flower
started (a marker in their environment, those paths in their command line, and their
descendants) and ends them by pid, whether the test passed or not.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch

from fedll.config import dump_scenario, expand_trials, load_scenario
from fedll.data.prepare import prepare_cohort
from fedll.models.saved import read_model
from fedll.results.columns import RESULT_COLUMNS
from fedll.run.execute import run_trial
from fedll.run.run_dir import RESOLVED_SCENARIO
from fedll.run.store import TrialFiles

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: flwr depends on tomli
    import tomli as tomllib

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]  # the Flower app: pyproject.toml's [tool.flwr.app]
MARKER = "FEDLL_FLWR_PARITY_TEST"  # in the environment of every process this test starts
FLWR_RUN_TIMEOUT = 240.0  # cold start ~20-40 s on 2 busy cores; only a hang gets near this
LOOSE = ("dice", "personal_dice")  # compared to 1e-6; every other column exactly
KEYS = [c for c in RESULT_COLUMNS if c not in LOOSE]

SCENARIO = """\
name: flwr-parity
cohort: {{synthetic: {{seed: 0, shape: [48, 56, 44]}}}}
cache_dir: {cache_dir}
slices: {{size: 32}}
sites:
  - {{name: hosp-t2, modality: t2, patients: 2}}
  - {{name: hosp-flair, modality: flair, patients: 2}}
test: {{patients_per_modality: 1}}
stream: {{ordering: alternating, arrival_batch: 1}}
models:
  static: {{name: static, base_width: 4, depth: 2}}
strategies: [{strategy}]
seeds: [0]
# enough steps that Dice moves off 0 after round 2 (with 1 epoch of batch 16 at lr 1e-3 the
# tiny model predicts no tumour in any round, and a parity check on all-zero Dice is empty)
# fp32: the steps above were sized for it (in bf16 this 4-wide net stays at Dice 0 here)
training: {{epochs: 3, batch_size: 4, lr: 0.01, precision: fp32}}
"""


def copy_app(dest: Path) -> Path:
    """The Flower app: what ``[tool.flwr.app] fab-include`` names, copied from the repo root.

    ``flwr run .`` walks the whole app dir before it applies ``fab-include``; at the repo root
    that is the virtual environment too (~46k files, ~5 s). The FAB built from the copy holds
    the same files.
    """
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    tops = {pattern.split("/")[0] for pattern in config["tool"]["flwr"]["app"]["fab-include"]}
    dest.mkdir()
    for top in sorted(tops | {"pyproject.toml", ".gitignore"}):
        source = REPO / top
        if source.is_dir():
            shutil.copytree(source, dest / top, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            shutil.copy2(source, dest / top)
    return dest


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True)
class Flower:
    """A private Flower home, ports and environment for ``flwr`` and what it spawns."""

    home: Path
    env: dict[str, str]
    flwr: str
    needles: tuple[str, ...]  # a process whose command line holds one of these is ours
    token: str

    def start(self, app_dir: Path, args: list[str], log: Path) -> subprocess.Popen:
        """``flwr ARGS`` in ``app_dir``, its output to ``log``."""
        with log.open("w") as out:
            return subprocess.Popen(
                [self.flwr, *args], cwd=app_dir, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def processes(self) -> list[psutil.Process]:
        """Every live process Flower started for this test, with its descendants."""
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            if proc.pid == os.getpid():
                continue
            try:
                cmdline = " ".join(proc.info["cmdline"] or ())
                ours = any(n in cmdline for n in self.needles)
                if ours or proc.environ().get(MARKER) == self.token:
                    found[proc.pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for proc in list(found.values()):
            try:
                found.update({c.pid: c for c in proc.children(recursive=True)})
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return [p for p in found.values() if _alive(p)]

    def stop_all(self) -> list[int]:
        """End every process of :meth:`processes`, by pid (TERM, then KILL); returns the pids."""
        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)
        return [p.pid for p in procs]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[Flower]:
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent))
    assert flwr, f"no flwr next to {sys.executable}"
    home = tmp_path / "flwr-home"  # outside the app dir (tmp_path / "app")
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    )
    # Ray's session dirs (sockets included: keep the path short) go here, not to /tmp/ray
    ray_tmp = Path(tempfile.mkdtemp(prefix="fedll-parity-"))
    http_port, control_port = _free_ports(2)
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "FLWR_"))}
    env.update(
        {
            "FLWR_HOME": str(home),
            # the SuperLink spawns flower-superexec and flwr-simulation through PATH
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
            "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
            "RAY_TMPDIR": str(ray_tmp),
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences a FutureWarning
            MARKER: token,
        }
    )
    needles = (str(home), str(ray_tmp))
    fl = Flower(home=home, env=env, flwr=flwr, needles=needles, token=token)
    try:
        yield fl
    finally:
        stopped = fl.stop_all()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        left = [p.pid for p in fl.processes()]
        assert not left, f"processes left running after stopping {stopped}: {left}"


def _diagnostics(fl: Flower, output: str) -> str:
    superlink_log = fl.home / "local-superlink" / "superlink.log"
    tail = superlink_log.read_text(errors="replace")[-3000:] if superlink_log.exists() else ""
    return f"flwr run output (tail):\n{output[-6000:]}\nsuperlink.log (tail):\n{tail}"


@pytest.mark.parametrize("strategy", ["fedavg", "scaffold", "ditto"])
def test_flwr_run_matches_the_in_process_run(strategy: str, tmp_path: Path, flower: Flower) -> None:
    started = time.monotonic()
    # any flwr command against `local` starts the local SuperLink (flwr run would reuse it):
    # let it start while the cohort is prepared
    app_dir = copy_app(tmp_path / "app")
    warm_up = flower.start(app_dir, ["list", "local"], tmp_path / "flwr-list.log")
    source = tmp_path / "scenario.yaml"
    source.write_text(SCENARIO.format(cache_dir=tmp_path / "cache", strategy=strategy))
    scenario = load_scenario(source)
    trial = expand_trials(scenario)[0]

    # the run directory as `fedll run` prepares it, and a copy of it for `flwr run`
    in_process, simulated = tmp_path / "in-process", tmp_path / "flwr"
    in_process.mkdir()
    try:
        (in_process / RESOLVED_SCENARIO).write_text(dump_scenario(scenario))
        prepare_cohort(scenario, source=str(source)).write(in_process / "cohort.json")
        shutil.copytree(in_process, simulated)
    finally:  # one SuperLink: flwr run must not start a second one while this one comes up
        try:
            warm_up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            warm_up.kill()
            warm_up.wait()
    prepared_at = time.monotonic()

    # `flwr run` first (its cold start dominates), the in-process trial while it runs
    run_config = (
        f'scenario="{simulated / RESOLVED_SCENARIO}" trial=0 run-dir="{simulated}" threads=1'
    )
    federation = f"num-supernodes={len(scenario.sites)} client-resources-num-cpus=1"
    log = tmp_path / "flwr-run.log"
    proc = flower.start(
        app_dir,
        [
            "run",
            ".",
            "local",
            "--stream",
            "--federation-config",
            federation,
            "--run-config",
            run_config,
        ],
        log,
    )
    try:
        threads = torch.get_num_threads()
        try:
            expected_path = run_trial(in_process, 0, threads=1)
        finally:
            torch.set_num_threads(threads)
        in_process_s = time.monotonic() - prepared_at
        rc = proc.wait(timeout=FLWR_RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    flwr_s = time.monotonic() - prepared_at

    output = log.read_text(errors="replace")
    why = _diagnostics(flower, output)
    got_path = TrialFiles.of(simulated, trial.trial_id).results
    assert rc == 0, f"flwr run exited with {rc}\n{why}"
    assert re.search(r"Successfully started run \d+", output), why
    nodes = f"({len(scenario.sites)} simulated SuperNodes)"
    assert nodes in output, f"expected a federation of {nodes}\n{why}"
    # `flwr run --stream` exits 0 even when the run failed: the results file is the proof
    assert got_path.exists(), f"no {got_path.name} from flwr run\n{why}"
    # the ServerApp's `collect` (on by default under flwr run) rebuilt results.csv
    assert (simulated / "results.csv").exists()

    expected = pd.read_csv(expected_path, keep_default_na=False)
    got = pd.read_csv(got_path, keep_default_na=False)
    rounds = 2 * len(scenario.sites)  # 2 patients per site, one arriving per round
    assert len(expected) == (rounds + 1) * 2  # rounds 0..4 x one test case per modality
    assert (expected["failed"] == "").all(), "a site failed in the in-process run"
    # the final models are compared too: SCAFFOLD's control variates (with fedll's default
    # Adam, see strategies/scaffold.py) keep this tiny model's Dice at 0 in these few steps
    if strategy != "scaffold":
        assert (expected["dice"] > 0).any(), "Dice never moved off 0: the comparison is empty"
    finals = [
        read_model(d / "models" / f"{trial.trial_id}.safetensors").module.state_dict()
        for d in (in_process, simulated)
    ]
    for key, value in finals[0].items():
        torch.testing.assert_close(finals[1][key], value, rtol=0, atol=1e-6, msg=key)
    pd.testing.assert_frame_equal(got[KEYS], expected[KEYS])
    personal = [pd.to_numeric(f["personal_dice"], errors="coerce") for f in (expected, got)]
    if strategy == "ditto":  # both sites' personalised models scored once each has trained
        assert personal[0][expected["round"] >= 2].notna().all()
    else:
        assert personal[0].isna().all()
    np.testing.assert_allclose(personal[1], personal[0], rtol=0, atol=1e-6, equal_nan=True)
    diff = float((got["dice"] - expected["dice"]).abs().max())
    table = pd.concat(
        [expected[KEYS[KEYS.index("round") :]], expected["dice"], got["dice"]], axis=1
    )
    assert diff <= 1e-6, f"Dice differ by up to {diff}\n{table}"

    identical = "bit-identical" if (got["dice"] == expected["dice"]).all() else f"{diff:.1e} apart"
    print(
        f"\nflwr parity: prepare {prepared_at - started:.1f} s, in-process {in_process_s:.1f} s, "
        f"flwr run {flwr_s:.1f} s, test {time.monotonic() - started:.1f} s; Dice {identical}"
    )
