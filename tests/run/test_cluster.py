"""A two-node Ray cluster on 127.0.0.1 without a shared disk: the head takes no trial (0 CPUs),
and the worker node runs in its own mount namespace, with tmpfs mounted over the run
directory's parent and over fedll's cache, so it cannot see a file of the driver's. A sweep
sent there with `--address` (and a relative `--out`) gives the tables of a `--local` run, byte
for byte."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import kill_session, session_processes

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).with_name("ray")
SEES = Path(__file__)  # the worker must still see the installed fedll: only data is hidden


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True
    )
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(
    not _unshare_works(), reason="needs `unshare -m` (root or CAP_SYS_ADMIN) for a private mount"
)


class Node:
    """`ray start --block` in its own session; stopped by killing that session."""

    def __init__(self, command: list[str], log: Path, marker: str, env: dict[str, str]):
        self.marker = marker
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def stop(self) -> list:
        survivors = kill_session(self.proc.pid, self.marker)
        self.proc.wait(timeout=10)
        self.log.close()
        return survivors


def _wait_for_nodes(address: str, count: int, env: dict[str, str], timeout: float) -> None:
    script = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    deadline = time.monotonic() + timeout
    while True:
        seen = subprocess.run(
            [sys.executable, "-c", script, address], capture_output=True, text=True, env=env
        )
        if seen.returncode == 0 and seen.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        assert time.monotonic() < deadline, f"{count} Ray nodes not up: {seen.stderr[-2000:]}"
        time.sleep(1.0)


@pytest.fixture
def cluster(tmp_path: Path, fedll_cache: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A head of 0 CPUs and a worker of 2 CPUs that sees neither ``tmp_path`` nor the cache."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="fedll-ray-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=str(ray_tmp))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--node-ip-address=127.0.0.1", "--object-store-memory=200000000"]
    nodes = [
        Node(
            [
                str(RAY),
                "start",
                "--head",
                f"--port={port}",
                "--num-cpus=0",
                "--num-gpus=0",
                "--include-dashboard=false",
                f"--temp-dir={ray_tmp}",
                *common,
            ],
            tmp_path.parent / f"{tmp_path.name}-head.log",
            str(ray_tmp),
            env,
        )  # fmt: skip
    ]
    try:
        _wait_for_nodes(address, 1, env, timeout=60)
        (tmp_path / "driver-only").touch()
        hidden = f"mount -t tmpfs tmpfs {tmp_path} && mount -t tmpfs tmpfs {fedll_cache}"
        check = f"test ! -e {tmp_path}/driver-only && test -e {SEES}"
        start = " ".join([str(RAY), "start", f"--address={address}", "--num-cpus=2", *common])
        nodes.append(
            Node(
                [
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    f"{hidden} && {check} && exec {start}",
                ],
                tmp_path.parent / f"{tmp_path.name}-worker.log",
                str(ray_tmp),
                env,
            )  # fmt: skip
        )
        _wait_for_nodes(address, 2, env, timeout=90)
        yield address, env
    finally:
        survivors = [p for node in reversed(nodes) for p in node.stop()]
        left = [p for p in session_processes(-1, str(ray_tmp)) if p.is_running()]
        shutil.rmtree(ray_tmp, ignore_errors=True)
        assert survivors == [] and left == [], f"Ray processes outlived the test: {left}"


@needs_unshare
def test_a_sweep_on_a_cluster_without_a_shared_disk_gives_the_local_tables(
    cluster, tmp_path, make_scenario, run_fedll
):
    address, env = cluster
    scenario = make_scenario(
        tmp_path / "s.yaml",
        {"models": {"dycnn": None}, "seeds": [0, 1], "joint": True, "training": {"epochs": 2}},
    )
    local = run_fedll("run", scenario, "--out", tmp_path / "local", "--local", cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    ran = subprocess.run(
        [str(Path(sys.executable).with_name("fedll")), "run", "s.yaml", "--out", "remote",
         "--address", address],
        cwd=tmp_path, env={**env, "NO_COLOR": "1", "COLUMNS": "200"}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for name in ("results.csv", "attention.csv", "tables/forgetting.csv", "tables/forgetting.md"):
        assert (tmp_path / "remote" / name).read_bytes() == (
            tmp_path / "local" / name
        ).read_bytes(), name
