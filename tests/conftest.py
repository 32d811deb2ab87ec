"""Shared fixtures: a tiny scenario factory and `fedll` subprocesses that clean up after Ray.

The tiny scenario is two sites x two patients (one T2, one FLAIR), one test patient per
modality, 32-pixel slices and U-Nets of width 4 and depth 2. Its synthetic cohort and slice
cache live in one directory per test session, so the cohort is synthesised once.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from processes import kill_session, session_processes

TINY: dict[str, Any] = {
    "name": "tiny",
    "cohort": {"synthetic": {"seed": 0, "shape": [48, 56, 44]}},
    "slices": {"size": 32},
    "sites": [
        {"name": "hospital-t2", "modality": "t2", "patients": 2},
        {"name": "hospital-flair", "modality": "flair", "patients": 2},
    ],
    "test": {"patients_per_modality": 1},
    "stream": {"ordering": "alternating", "arrival_batch": 1},
    "models": {
        "static": {"name": "static", "base_width": 4, "depth": 2},
        "dycnn": {"name": "dycnn", "base_width": 4, "depth": 2},
    },
    "training": {"epochs": 1},
}

WriteScenario = Callable[..., Path]


def merge(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``updates`` merged in: mappings recursively, anything else replaced, and
    a key whose update is None removed."""
    out = copy.deepcopy(base)
    for key, value in updates.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture(scope="session")
def fedll_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's cohort and slice cache (the scenarios' ``cache_dir``)."""
    return tmp_path_factory.mktemp("fedll-cache")


@pytest.fixture(scope="session")
def make_scenario(fedll_cache: Path) -> WriteScenario:
    """``make_scenario(path, updates=None, text=None)``: write the tiny scenario with ``updates``
    merged in (or ``text`` verbatim) to ``path``; usable from fixtures of any scope."""

    def write(path: Path, updates: dict[str, Any] | None = None, text: str | None = None) -> Path:
        if text is None:
            raw = merge(merge(TINY, {"cache_dir": str(fedll_cache)}), updates or {})
            text = yaml.safe_dump(raw, sort_keys=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return write


@pytest.fixture
def tiny_raw(fedll_cache: Path) -> dict[str, Any]:
    """The tiny scenario as a fresh raw mapping, pointing at the session cache."""
    return merge(TINY, {"cache_dir": str(fedll_cache)})


@pytest.fixture
def write_scenario(tmp_path: Path, make_scenario: WriteScenario) -> WriteScenario:
    """``write_scenario(updates=None, name="scenario.yaml", text=None)``: the tiny scenario
    written to ``tmp_path/name`` (see ``make_scenario``)."""

    def write(
        updates: dict[str, Any] | None = None, name: str = "scenario.yaml", text: str | None = None
    ) -> Path:
        return make_scenario(tmp_path / name, updates, text)

    return write


def fedll_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m fedll.cli``."""
    script = Path(sys.executable).with_name("fedll")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fedll.cli"]


RunFedll = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="session")
def run_fedll() -> RunFedll:
    """``run_fedll(*args, cwd=..., timeout=300)``: the console script to completion, output
    captured as text (for commands that do not start Ray: use ``spawn_fedll`` for those)."""

    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}

    def run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*fedll_command(), *map(str, args)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def _sigint_as_at_a_terminal() -> None:
    """In the child before exec: SIGINT at its default, as for a command typed at a terminal.
    A test run started in the background (``cmd &`` in a script, some CI runners) inherits
    SIGINT ignored, an ignored signal stays ignored across exec, and Python then installs no
    KeyboardInterrupt handler: the command would rightly never see a Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class FedllProcess:
    """A ``fedll`` command in its own session, with a private Ray temp directory and SIGINT
    at its default (:func:`_sigint_as_at_a_terminal`)."""

    def __init__(self, args: list[str], cwd: Path, ray_tmp: Path, log_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(
            RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0", NO_COLOR="1", COLUMNS="200"
        )
        self.ray_tmp = ray_tmp
        log_dir.mkdir(parents=True, exist_ok=True)
        self._out = (log_dir / "stdout.txt").open("w+")
        self._err = (log_dir / "stderr.txt").open("w+")
        self.proc = subprocess.Popen(
            [*fedll_command(), *args],
            cwd=cwd,
            env=env,
            stdout=self._out,
            stderr=self._err,
            start_new_session=True,
            preexec_fn=_sigint_as_at_a_terminal,
        )
        self.sid = self.proc.pid

    def wait(self, timeout: float) -> int:
        """The exit code (``-signal`` if killed), leaving the process unreaped: its pid, and so
        its process group and session ids, cannot be reused before :meth:`close`."""
        deadline = time.monotonic() + timeout
        while (
            info := os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        ) is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.proc.args, timeout)
            time.sleep(0.1)
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def running(self) -> bool:
        return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None

    def _read(self, handle: Any) -> str:
        handle.flush()
        handle.seek(0)
        return handle.read()

    @property
    def stdout(self) -> str:
        return self._read(self._out)

    @property
    def stderr(self) -> str:
        return self._read(self._err)

    def leftovers(self) -> list[psutil.Process]:
        """Live processes other than the command itself still tied to its session."""
        alive = []
        for proc in session_processes(self.sid, str(self.ray_tmp)):
            with contextlib.suppress(psutil.Error):
                if proc.pid != self.proc.pid and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        return alive

    def kill(self) -> list[psutil.Process]:
        """Kill the whole session (the command, Ray's daemons and workers), then reap the
        command; returns the processes that survived."""
        if self.proc.returncode is not None:
            return []
        survivors = kill_session(self.sid, str(self.ray_tmp))
        self.proc.wait(timeout=10)
        return survivors

    def close(self) -> None:
        self.kill()
        self._out.close()
        self._err.close()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


SpawnFedll = Callable[..., FedllProcess]


@pytest.fixture
def spawn_fedll(tmp_path: Path) -> Iterator[SpawnFedll]:
    """``spawn_fedll(*args)`` starts ``fedll ARGS`` in ``tmp_path``; everything it started is
    killed at teardown. Ray gets a short private temp dir (socket paths must stay < 108 bytes),
    so its daemons are told apart from other users' Ray by command line as well as session."""
    started: list[FedllProcess] = []

    def spawn(*args: str) -> FedllProcess:
        ray_tmp = Path(tempfile.mkdtemp(prefix="fedll-ray-", dir="/tmp"))
        proc = FedllProcess(list(args), tmp_path, ray_tmp, tmp_path / f"log{len(started)}")
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.close()
