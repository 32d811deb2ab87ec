"""The Flower app deployed for real on 127.0.0.1: a SuperLink with TLS and SuperNode
authentication, SuperNodes started by ``fedll site`` for a T2 and a FLAIR hospital, each
reading only its own data folder, and ``flwr run . <connection>`` for the two-round trial.

Checked: only SuperNodes with a registered key get in (an unregistered key, a node without
TLS and a node that does not trust the CA are refused); the run writes the results, tables
and plots that ``fedll run`` writes, ``fedll report`` rebuilds them, a node with a broken
node config is reported by id and reason while the run goes on, and the Dice equal those of
the in-process simulation of the same scenario and seed.

Every process runs with a private ``FLWR_HOME`` and a marker in its environment, on free
ports; the module fixture ends all of them (and what they spawned) by pid, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
from test_deploy import TWO_ROUNDS  # the tiny scenario in two rounds, trained so Dice moves
from test_flwr_parity import KEYS, MARKER, Flower, _free_ports, copy_app

from fedll.config import dump_scenario, expand_trials, load_scenario
from fedll.data.prepare import prepare_cohort
from fedll.deploy.certs import Certificates, write_certificates
from fedll.deploy.site_data import write_site_manifests
from fedll.run.execute import run_trial
from fedll.run.run_dir import RESOLVED_SCENARIO
from fedll.run.store import TrialFiles

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CONNECTION = "deploy"
START_TIMEOUT = 90.0  # a SuperLink or SuperNode start is ~5 s on 2 busy cores
RUN_TIMEOUT = 240.0  # the two-round run takes ~40 s here; only a hang gets near this


@dataclass
class Deployment:
    """A SuperLink on a free port of 127.0.0.1, the files it needs, and what was started."""

    root: Path
    certs: Certificates
    port: int
    flower: Flower
    node_ids: dict[str, int] = field(default_factory=dict)  # registered: key name -> node id
    started: list[subprocess.Popen] = field(default_factory=list)

    @property
    def superlink(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def spawn(self, name: str, argv: list[str], cwd: Path | None = None) -> subprocess.Popen:
        """``argv`` in the background, output to ``logs/NAME.log``."""
        with self.log(name).open("w") as out:
            proc = subprocess.Popen(
                argv,
                cwd=cwd or self.root,
                env=self.flower.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started.append(proc)
        return proc

    def flwr(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.flower.flwr, *args],
            cwd=cwd or self.root,
            env=self.flower.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def register(self, *names: str) -> None:
        """``flwr supernode register KEY.pub`` for the keys ``names`` (at once); records the
        node ids in :attr:`node_ids`."""
        procs = {}
        for name in names:
            public_key = str(self.certs.keys[name][1])
            argv = [self.flower.flwr, "supernode", "register", public_key, CONNECTION]
            procs[name] = self.spawn(f"register-{name}", [*argv, "--format", "json"])
        for name, proc in procs.items():
            proc.wait(timeout=60)
            out = self.log(f"register-{name}").read_text()
            reply = json.loads(out[out.find("{") :])
            assert reply["success"], out
            self.node_ids[name] = int(reply["node-id"])

    def nodes(self) -> dict[int, str]:
        """node id -> status, as ``flwr supernode ls`` reports them."""
        done = self.flwr("supernode", "ls", CONNECTION, "--format", "json")
        reply = json.loads(done.stdout[done.stdout.find("{") :])
        return {int(n["node-id"]): n["status"] for n in reply["nodes"]}

    def site(
        self, name: str, modality: str, data_dir: Path, key: str, log_name: str | None = None
    ) -> subprocess.Popen:
        """A hospital's SuperNode, started as docs/tutorials/deploy.md says: ``fedll site``
        (its output in ``logs/LOG_NAME.log``, by default the site's name)."""
        (runtime_port,) = _free_ports(1)
        argv = [str(BIN / "fedll"), "site", "--site", name, "--modality", modality]
        argv += ["--data-dir", str(data_dir), "--superlink", self.superlink]
        argv += ["--root-certificates", str(self.certs.ca_cert)]
        argv += ["--auth-key", str(self.certs.keys[key][0])]
        argv += ["--runtime-port", str(runtime_port), "--cache-dir", str(self.root / "cache")]
        return self.spawn(log_name or name, argv)

    def supernode(self, name: str, *args: str) -> subprocess.Popen:
        """A bare ``flower-supernode`` (for nodes ``fedll site`` would not start)."""
        (runtime_port,) = _free_ports(1)
        argv = [str(BIN / "flower-supernode"), "--superlink", self.superlink]
        return self.spawn(name, [*argv, "--port", str(runtime_port), *args])

    def wait_online(self, name: str) -> int:
        """Wait until SuperNode ``name`` is connected; returns its node id."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if found := re.search(r"SuperNode ID: (\d+)", self.log(name).read_text()):
                return int(found.group(1))
            time.sleep(0.5)
        raise AssertionError(f"{name} did not connect:\n{self.log(name).read_text()[-3000:]}")


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the SuperLink exited:\n{log.read_text()[-3000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the SuperLink did not listen:\n{log.read_text()[-3000:]}")


def make_deployment(root: Path, keys: list[str]) -> Deployment:
    """Certificates (a key pair per name of ``keys``), a private ``FLWR_HOME`` whose default
    connection is the SuperLink on a free port of 127.0.0.1, and an environment marked so
    that :meth:`Flower.processes` finds everything started with it."""
    (root / "logs").mkdir()
    certs = write_certificates(root / "certs", keys)
    home = root / "flwr-home"
    home.mkdir()
    (port,) = _free_ports(1)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{certs.ca_cert}"\n'
    )
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "FLWR_"))}
    env.update(
        {
            "FLWR_HOME": str(home),
            # the SuperLink and SuperNodes spawn flower-superexec, flwr-serverapp and
            # flwr-clientapp through PATH
            "PATH": f"{BIN}:{env.get('PATH', '')}",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            MARKER: token,
        }
    )
    flower = Flower(home=home, env=env, flwr=str(BIN / "flwr"), needles=(f"{root}/",), token=token)
    return Deployment(root=root, certs=certs, port=port, flower=flower)


def start_superlink(
    dep: Deployment, database: Path | None = None, name: str = "superlink"
) -> subprocess.Popen:
    """The SuperLink (TLS, SuperNode auth; its state in ``database`` when given, else in
    memory), listening."""
    certs = dep.certs
    argv = [
        str(BIN / "flower-superlink"),
        *("--ssl-ca-certfile", str(certs.ca_cert)),
        *("--ssl-certfile", str(certs.server_cert)),
        *("--ssl-keyfile", str(certs.server_key)),
        "--enable-supernode-auth",
        *("--host", "127.0.0.1", "--port", str(dep.port)),
        "--disable-runtime-dependency-installation",
    ]
    if database is not None:
        argv += ["--database", str(database)]
    link = dep.spawn(name, argv)
    _wait_for_port(dep.port, link, dep.log(name))
    return link


def stop_deployment(dep: Deployment) -> None:
    """End every process of ``dep`` by pid (also what they spawned), and check none is left."""
    stopped = _stop(dep.flower)
    for proc in dep.started:  # reap the ones started here
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    left = [p.pid for p in dep.flower.processes()]
    assert not left, f"processes left running after stopping {stopped}: {left}"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The SuperLink (TLS, SuperNode auth), three registered keys, two hospital SuperNodes."""
    root = tmp_path_factory.mktemp("deploy")
    dep = make_deployment(root, ["hospital-t2", "hospital-flair", "hospital-broken", "rogue"])
    try:
        start_superlink(dep)
        dep.register("hospital-t2", "hospital-flair", "hospital-broken")
        yield dep
    finally:
        stop_deployment(dep)


def _stop(flower: Flower, grace: float = 3.0) -> list[int]:
    """End every process Flower started for this module, by pid: TERM, then KILL after
    ``grace`` seconds (a SuperNode says goodbye to the SuperLink first; no need to wait)."""
    procs = flower.processes()
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)
    return [p.pid for p in procs]


@pytest.fixture(scope="module")
def scenario_files(deployment: Deployment, make_scenario) -> tuple[Path, dict[str, Path]]:
    """The two-round scenario and each hospital's data folder (exactly its cases of the split)."""
    source = make_scenario(deployment.root / "scenario.yaml", TWO_ROUNDS)
    prepared = prepare_cohort(load_scenario(source))
    manifests = write_site_manifests(prepared, deployment.root / "sites")
    return source, {site: path.parent for site, path in manifests.items()}


@pytest.fixture(scope="module")
def intruders(deployment: Deployment, scenario_files) -> dict[str, subprocess.Popen]:
    """SuperNodes the SuperLink must refuse, started (not awaited): an unregistered key, no
    TLS, and TLS without the CA (the system's CAs only)."""
    _, folders = scenario_files
    config = ["--node-config", f'site="intruder" modality="t2" data-dir="{folders["hospital-t2"]}"']
    tls = ["--root-certificates", str(deployment.certs.ca_cert)]
    rogue = ["--auth-supernode-private-key", str(deployment.certs.keys["rogue"][0])]
    give_up = ["--max-retries", "0"]  # a refused connection is not retried
    return {
        "unregistered": deployment.supernode("unregistered", *tls, *rogue, *config),
        "insecure": deployment.supernode("insecure", "--insecure", *give_up, *config),
        "no-ca": deployment.supernode("no-ca", *give_up, *config),
    }


@pytest.fixture(scope="module")
def hospitals(deployment: Deployment, scenario_files) -> dict[str, int]:
    """The SuperNodes of the T2 and the FLAIR hospital (``fedll site``) and a third registered
    one whose data dir is not there (a bare ``flower-supernode``: ``fedll site`` would refuse
    to start it), all connected; site -> node id."""
    source, folders = scenario_files
    scenario = load_scenario(source)
    for s in scenario.sites:
        deployment.site(s.name, s.modality, folders[s.name], key=s.name)
    missing = deployment.root / "not-mounted"
    deployment.supernode(
        "hospital-broken",
        *("--root-certificates", str(deployment.certs.ca_cert)),
        *("--auth-supernode-private-key", str(deployment.certs.keys["hospital-broken"][0])),
        *("--node-config", f'site="hospital-broken" modality="t2" data-dir="{missing}"'),
    )
    names = [s.name for s in scenario.sites] + ["hospital-broken"]
    return {name: deployment.wait_online(name) for name in names}


def test_only_supernodes_with_a_registered_key_over_tls_get_in(
    deployment: Deployment, intruders: dict[str, subprocess.Popen], hospitals: dict[str, int]
) -> None:
    started = time.monotonic()
    for name, proc in intruders.items():
        try:
            rc = proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} was not refused:\n{deployment.log(name).read_text()[-3000:]}")
        log = deployment.log(name).read_text()
        assert rc != 0, log
        assert "Failed to initialize the connection to the SuperLink" in log, log
        assert "SuperNode ID" not in log, log
    assert "Failed to activate SuperNode" in deployment.log("unregistered").read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in deployment.log("no-ca").read_text()

    # the registered nodes are online, under the ids their keys were registered with
    assert hospitals == deployment.node_ids
    nodes = deployment.nodes()
    assert set(nodes) == set(hospitals.values()), nodes  # nobody else was let in
    assert set(nodes.values()) == {"online"}, nodes
    print(f"\nflwr deploy auth: refusals checked in {time.monotonic() - started:.1f} s")


def test_a_deployed_run_gives_the_outputs_and_dice_of_the_simulation(
    deployment: Deployment, hospitals: dict[str, int], scenario_files, run_fedll
) -> None:
    started = time.monotonic()
    source, _ = scenario_files
    scenario = load_scenario(source)
    trial = expand_trials(scenario)[0]
    # the coordinator's run dir starts empty: the ServerApp prepares the cohort's test sets
    deployed = deployment.root / "runs" / "deployed"
    simulated = deployment.root / "runs" / "simulated"
    simulated.mkdir(parents=True)
    (simulated / RESOLVED_SCENARIO).write_text(dump_scenario(scenario))
    prepare_cohort(scenario).write(simulated / "cohort.json")
    app_dir = copy_app(deployment.root / "app")
    run_config = f'scenario="{source}" trial=0 run-dir="{deployed}" threads=1'
    flwr_run = deployment.spawn(
        "flwr-run",
        [deployment.flower.flwr, "run", ".", CONNECTION, "--stream", "--run-config", run_config],
        cwd=app_dir,
    )
    threads = torch.get_num_threads()
    try:  # the in-process simulation while the deployment runs
        expected_path = run_trial(simulated, 0, threads=1)
    finally:
        torch.set_num_threads(threads)
    try:
        rc = flwr_run.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        rc = None
    output = deployment.log("flwr-run").read_text(errors="replace")
    assert rc == 0, f"flwr run: {rc}\n{output[-6000:]}"
    assert re.search(r"Successfully started run \d+", output), output[-6000:]
    run_s = time.monotonic() - started
    # flwr run exits 0 even when the ServerApp died: its log must show no exception (the
    # report templates missing from the app once crashed it after the last round)
    for sign in ("Traceback", "Exit Code"):
        assert sign not in output, f"the ServerApp failed ({sign!r}):\n{output[-6000:]}"
    # Flower's lines that say evaluation is skipped or empty are not in the log
    assert "Federated evaluation will be skipped" not in output, output[-6000:]
    assert "MetricRecord: None" not in output, output[-6000:]

    # the results file (flwr run exits 0 even when the ServerApp failed) ...
    got_path = TrialFiles.of(deployed, trial.trial_id).results
    assert got_path.exists(), f"no results from the deployed run\n{output[-6000:]}"
    got = pd.read_csv(got_path, keep_default_na=False)
    expected = pd.read_csv(expected_path, keep_default_na=False)
    # ... holds the same rounds and the same Dice as the simulation (Dice moved off 0)
    assert sorted(got["round"].unique()) == [0, 1, 2]
    assert (expected["dice"] > 0).any(), "Dice never moved off 0: the comparison would be empty"
    assert (got["failed"] == "").all()
    pd.testing.assert_frame_equal(got[KEYS], expected[KEYS])
    assert (got["dice"] == expected["dice"]).all(), pd.concat(
        [expected[["round", "modality", "dice"]], got["dice"].rename("deployed")], axis=1
    )
    # the broken node's ClientApp failed on query.meta: reported by node id and reason
    missing = deployment.root / "not-mounted"
    assert f"node {hospitals['hospital-broken']} could not describe itself" in output, output
    assert f"site hospital-broken: data-dir {missing} does not exist" in output

    # the coordinator has what `fedll run` leaves, and `fedll report` rebuilds the report
    for name in ("scenario.yaml", "cohort.json", "results.csv", "attention.csv", "report.html"):
        assert (deployed / name).exists(), name
    assert (deployed / "tables" / "forgetting.md").exists()
    assert sorted(p.name for p in (deployed / "plots").glob("*.png"))
    shutil.rmtree(deployed / "tables")
    report = run_fedll("report", deployed, cwd=deployment.root)
    assert report.returncode == 0, report.stderr
    assert "static" in report.stdout and (deployed / "tables" / "forgetting.md").exists()
    assert "trials: 1 done, 0 failed;" in report.stdout, report.stdout
    print(
        f"\nflwr deploy: flwr run {run_s:.1f} s, test {time.monotonic() - started:.1f} s; "
        "Dice bit-identical to the simulation"
    )
