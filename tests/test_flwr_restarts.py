"""A deployed federation that survives restarts, with real processes on 127.0.0.1: a SuperLink
with TLS, SuperNode authentication and its state in SQLite (``--database``), a SuperNode per
hospital started by ``fedll site``, and ``flwr run``.

- The SuperLink and the ServerApp killed with SIGKILL after round 2 of 4, the SuperLink
  started again on the same database and the same ``flwr run`` issued again: the run resumes
  at round 3 and its results are those of the in-process simulation, bit for bit (the sites'
  replay buffers and Adam's moments came back from their disks into the new Flower run).
- A SuperNode killed with SIGKILL in the middle of round 2 of 3: the round completes with the
  other site (the killed one recorded failed once the SuperLink gives up on it), the site
  restarts (``execution.round_timeout``: round 3 waits for it if it is not back yet) and
  trains round 3 with the state it kept after round 1 (its replay buffer): the results are
  those of the simulation in which the site raises in round 2.

Each test ends every process it started (and what they spawned) by pid, also on failure.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
from test_deploy import TWO_ROUNDS
from test_flwr_deploy import (
    CONNECTION,
    Deployment,
    make_deployment,
    start_superlink,
    stop_deployment,
)
from test_flwr_parity import KEYS, copy_app

from fedll.config import dump_scenario, expand_trials, load_scenario
from fedll.config.grid import trial_fingerprint
from fedll.config.instruction import StateKey
from fedll.data.prepare import prepare_cohort
from fedll.deploy.site_data import write_site_manifests
from fedll.errors import DataError
from fedll.federation.site_state import DATA_DIR_FOLDER, SiteStateStore
from fedll.run.checkpoint import decode
from fedll.run.execute import run_trial
from fedll.run.run_dir import RESOLVED_SCENARIO
from fedll.run.store import TrialFiles, checkpoint_path

pytestmark = pytest.mark.slow

SITES = ["hospital-t2", "hospital-flair"]
RUN_TIMEOUT = 300.0  # a few rounds take ~15 s each here; only a hang gets near this
# four rounds (T2, FLAIR, T2, FLAIR), trained so Dice moves, with state at the sites
FOUR_ROUNDS = {
    **TWO_ROUNDS,
    "stream": {"arrival_batch": 1},
    "cl": [{"name": "replay", "buffer": 2}],
    "training": {**TWO_ROUNDS["training"], "optimizer_state": "keep"},
}
# three rounds, both sites in each (3 patients a site, one arriving a round), a replay buffer;
# the round timeout outlasts the SuperLink's patience with a silent node (2 x 30 s heartbeats)
THREE_ROUNDS_BOTH = {
    **TWO_ROUNDS,
    "sites": [
        {"name": "hospital-t2", "modality": "t2", "patients": 3},
        {"name": "hospital-flair", "modality": "flair", "patients": 3},
    ],
    "stream": {"arrival_batch": 1, "arrivals_per_round": 2},
    "cl": [{"name": "replay", "buffer": 4}],
    "training": {"epochs": 3, "batch_size": 2, "lr": 0.01},
    "execution": {"round_timeout": 150},
}


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A SuperLink whose state is in ``superlink.db``, with the hospitals' keys registered."""
    dep = make_deployment(tmp_path, SITES)
    try:
        start_superlink(dep, database=tmp_path / "superlink.db")
        dep.register(*SITES)
        yield dep
    finally:
        stop_deployment(dep)


def prepare(dep: Deployment, make_scenario, updates: dict) -> tuple[Path, dict[str, Path]]:
    """The scenario file and each hospital's data folder (its cases of the split)."""
    source = make_scenario(dep.root / "scenario.yaml", updates)
    prepared = prepare_cohort(load_scenario(source))
    manifests = write_site_manifests(prepared, dep.root / "sites")
    return source, {site: path.parent for site, path in manifests.items()}


def simulate(root: Path, scenario_path: Path) -> pd.DataFrame:
    """The trial's results from the in-process simulation (``fedll run``'s way)."""
    scenario = load_scenario(scenario_path)
    run_dir = root / "simulated"
    run_dir.mkdir()
    (run_dir / RESOLVED_SCENARIO).write_text(dump_scenario(scenario))
    prepare_cohort(scenario).write(run_dir / "cohort.json")
    threads = torch.get_num_threads()
    try:
        return pd.read_csv(run_trial(run_dir, 0, threads=1), keep_default_na=False)
    finally:
        torch.set_num_threads(threads)


def start_sites(dep: Deployment, folders: dict[str, Path], suffix: str = "") -> None:
    for site in SITES:
        modality = "t2" if site.endswith("t2") else "flair"
        dep.site(site, modality, folders[site], key=site, log_name=site + suffix)
    for site in SITES:
        dep.wait_online(site + suffix)


def flwr_run(dep: Deployment, app_dir: Path, run_config: str, name: str) -> subprocess.Popen:
    argv = [dep.flower.flwr, "run", ".", CONNECTION, "--stream", "--run-config", run_config]
    return dep.spawn(name, argv, cwd=app_dir)


def finished(dep: Deployment, proc: subprocess.Popen, name: str) -> str:
    """The output of ``flwr run`` once it exited 0 (within :data:`RUN_TIMEOUT`)."""
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        rc = None
    output = dep.log(name).read_text(errors="replace")
    assert rc == 0, f"{name}: {rc}\n{output[-6000:]}"
    return output


def kill_tree(proc: psutil.Process) -> list[int]:
    """SIGKILL ``proc`` and everything it spawned (a machine that dies takes them all)."""
    family = [proc, *proc.children(recursive=True)]
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(family, timeout=10)
    return [p.pid for p in family]


def wait_for(what: str, check, timeout: float, poll: float = 0.2, dep=None, run=None):
    """Until ``check()`` holds; fails after ``timeout`` s, or at once when ``run`` (a
    ``flwr run`` of ``dep``) exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        if run is not None and run.poll() is not None:
            logs = {p.name: p.read_text(errors="replace")[-3000:] for p in dep.root.glob("logs/*")}
            raise AssertionError(f"{what}: flwr run exited ({run.returncode}) first:\n{logs}")
        time.sleep(poll)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def checkpointed_round(path: Path) -> int:
    try:
        return decode(path.read_bytes(), str(path)).round
    except (OSError, DataError):
        return 0


def assert_same_results(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert (expected["dice"] > 0).any(), "Dice never moved off 0: the comparison would be empty"
    pd.testing.assert_frame_equal(got[KEYS], expected[KEYS])
    assert (got["dice"] == expected["dice"]).all(), pd.concat(
        [expected[["round", "modality", "dice"]], got["dice"].rename("deployed")], axis=1
    )


def test_a_killed_superlink_and_serverapp_resume_at_the_next_round(
    deployment: Deployment, make_scenario
) -> None:
    dep = deployment
    started = time.monotonic()
    source, folders = prepare(dep, make_scenario, FOUR_ROUNDS)
    (trial,) = expand_trials(load_scenario(source))
    start_sites(dep, folders)
    app_dir = copy_app(dep.root / "app")
    run_dir = dep.root / "runs" / "deployed"
    run_config = f'scenario="{source}" trial=0 run-dir="{run_dir}" threads=1 collect=false'
    first = flwr_run(dep, app_dir, run_config, "flwr-run-1")
    expected = simulate(dep.root, source)  # while the deployment runs

    kept = checkpoint_path(run_dir, trial.trial_id)
    wait_for("the checkpoint of round 2", lambda: checkpointed_round(kept) >= 2, RUN_TIMEOUT,
             dep=dep, run=first)  # fmt: skip
    (link,) = [p for p in dep.started if Path(str(p.args[0])).name == "flower-superlink"]
    killed = kill_tree(psutil.Process(link.pid))  # the SuperLink, its SuperExec and ServerApp
    first.kill()  # the user's flwr run: it has nothing to stream from
    first.wait(timeout=10)
    assert len(killed) >= 3, f"expected the SuperLink, SuperExec and ServerApp: {killed}"
    assert checkpointed_round(kept) == 2
    assert not TrialFiles.of(run_dir, trial.trial_id).results.exists()
    killed_at = time.monotonic()

    start_superlink(dep, database=dep.root / "superlink.db", name="superlink-2")
    output = finished(dep, flwr_run(dep, app_dir, run_config, "flwr-run-2"), "flwr-run-2")
    assert f"trial {trial.trial_id} resumes after round 2" in output, output[-6000:]
    got = pd.read_csv(TrialFiles.of(run_dir, trial.trial_id).results, keep_default_na=False)
    assert sorted(got["round"].unique()) == [0, 1, 2, 3, 4]
    assert (got["failed"] == "").all()
    assert_same_results(got, expected)
    assert not kept.exists()  # the trial finished
    # the new Flower run's node contexts started empty: each site reloaded its kept state
    for site, before in (("hospital-t2", 1), ("hospital-flair", 2)):
        assert f"site {site}: state of round {before} reloaded" in dep.log(site).read_text()
    for folder in folders.values():
        (state,) = (folder / DATA_DIR_FOLDER).iterdir()
        assert oct(state.stat().st_mode & 0o777) == "0o600"
    print(
        f"\nflwr restarts: killed after {killed_at - started:.1f} s, resumed run "
        f"{time.monotonic() - killed_at:.1f} s; Dice bit-identical to the simulation"
    )


def test_a_killed_supernode_is_recorded_failed_then_rejoins_with_its_state(
    deployment: Deployment, make_scenario
) -> None:
    dep = deployment
    started = time.monotonic()
    source, folders = prepare(dep, make_scenario, THREE_ROUNDS_BOTH)
    scenario = load_scenario(source)
    (trial,) = expand_trials(scenario)
    start_sites(dep, folders)
    app_dir = copy_app(dep.root / "app")
    run_dir = dep.root / "runs" / "deployed"
    run_config = f'scenario="{source}" trial=0 run-dir="{run_dir}" threads=1 collect=false'
    run = flwr_run(dep, app_dir, run_config, "flwr-run")
    # the simulation of the same trial in which the T2 site raises in round 2 (its context,
    # and so its replay buffer, left as round 1 left it)
    faulty = make_scenario(
        dep.root / "faulty.yaml",
        {**THREE_ROUNDS_BOTH, "faults": [{"site": "hospital-t2", "raise_every": 2}]},
    )
    expected = simulate(dep.root, faulty)

    # the T2 SuperNode in the middle of round 2: it kept its state after round 1 and has
    # started the ClientApp of a later message (round 2's train message)
    state_dir = folders["hospital-t2"] / DATA_DIR_FOLDER
    (node,) = [p for p in dep.started if Path(str(p.args[0])).name == "fedll"
               and "hospital-t2" in p.args]  # fmt: skip
    supernode = psutil.Process(node.pid)

    def training_round_2() -> bool:
        kept = list(state_dir.glob("*.state")) if state_dir.is_dir() else []
        if not kept:
            return False
        after = kept[0].stat().st_mtime
        return any(c.create_time() > after + 0.01 for c in supernode.children(recursive=True))

    wait_for("the T2 site training round 2", training_round_2, RUN_TIMEOUT, 0.05, dep, run)
    kill_tree(supernode)
    node.wait(timeout=10)
    killed_at = time.monotonic()
    # Flower lets the node's key in again once the SuperLink has marked it offline
    node_id = dep.node_ids["hospital-t2"]
    wait_for("the killed node offline", lambda: dep.nodes().get(node_id) != "online", 120, 1.0)
    dep.site("hospital-t2", "t2", folders["hospital-t2"], key="hospital-t2",
             log_name="hospital-t2-again")  # fmt: skip
    assert dep.wait_online("hospital-t2-again") == node_id
    output = finished(dep, run, "flwr-run")
    run_id = re.search(r"Successfully started run (\d+)", output).group(1)

    got = pd.read_csv(TrialFiles.of(run_dir, trial.trial_id).results, keep_default_na=False)
    failed = got.groupby("round")["failed"].first().to_dict()
    assert failed == {0: "", 1: "", 2: "hospital-t2", 3: ""}, output[-6000:]
    assert "round 2: site hospital-t2 failed" in output
    assert got.loc[got["round"] == 3, "sites"].str.contains("hospital-t2").all()
    assert_same_results(got, expected)
    # the restarted site trained round 3 from its state of round 1: its buffer holds the
    # cases of rounds 1 and 3 (0 and 2), not round 2's, which it never finished
    key = StateKey(trial=trial.trial_id, fingerprint=trial_fingerprint(scenario, trial),
                   federation=run_id)  # fmt: skip
    store = SiteStateStore(state_dir, "hospital-t2")
    last, state = store.load(key, before_round=4)
    assert last == 3
    assert state["continual"]["buffer"].numpy().tolist() == [0, 2]
    assert store.load(key, before_round=3)[0] == 1
    print(
        f"\nflwr restarts: SuperNode killed after {killed_at - started:.1f} s, back and the "
        f"run done {time.monotonic() - killed_at:.1f} s later; Dice bit-identical"
    )
