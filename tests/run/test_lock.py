"""One process at a time in a run directory: a second ``fedll run`` or ``fedll report`` into a
directory another process works in is refused at once, naming the holder's pid, and changes
nothing there; the lock dies with its holder, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedll.cli import app
from fedll.errors import DataError
from fedll.run.lock import LOCK_FILE, hold_run_dir

HOLD = textwrap.dedent(
    """
    import sys, time
    from fedll.run.lock import hold_run_dir
    with hold_run_dir(sys.argv[1], "fedll run"):
        print("held", flush=True)
        time.sleep(120)
    """
)


@pytest.fixture
def holder(tmp_path: Path):
    """Another process that holds ``tmp_path/run``'s lock (killed at teardown)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield run_dir, proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _refused(result, pid: int) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"in use by fedll run (pid {pid}," in lines[0], lines[0]
    return lines[0]


def test_a_second_run_or_report_is_refused_naming_the_holder(
    holder, tmp_path: Path, make_scenario
) -> None:
    run_dir, proc = holder
    (run_dir / "results.csv").write_text("trial,round\n")  # what the holder has written so far
    before = _snapshot(run_dir)
    scenario = make_scenario(tmp_path / "other.yaml", {"training": {"epochs": 2}})
    runner = CliRunner()
    line = _refused(runner.invoke(app, ["run", str(scenario), "--out", str(run_dir)]), proc.pid)
    assert str(run_dir) in line
    _refused(runner.invoke(app, ["report", str(run_dir)]), proc.pid)
    assert _snapshot(run_dir) == before  # nothing written: no scenario.yaml, no tables


def test_the_lock_dies_with_its_holder_even_killed(holder) -> None:
    run_dir, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert (run_dir / LOCK_FILE).exists()  # left behind by kill -9, but no longer held
    with hold_run_dir(run_dir, "fedll report") as path:
        assert path == run_dir / LOCK_FILE
    assert not (run_dir / LOCK_FILE).exists()


def test_two_holders_in_one_process_exclude_each_other_and_release_on_error(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    refused = pytest.raises(DataError, match=rf"in use by fedll run \(pid {os.getpid()},")
    with hold_run_dir(run_dir, "fedll run"), refused, hold_run_dir(run_dir, "fedll report"):
        pass
    with pytest.raises(RuntimeError), hold_run_dir(run_dir, "fedll run"):
        raise RuntimeError("a failed run")
    assert not (run_dir / LOCK_FILE).exists()
    with hold_run_dir(run_dir, "fedll run"):  # free again
        pass


def test_a_report_of_a_missing_folder_creates_nothing(tmp_path: Path) -> None:
    with hold_run_dir(tmp_path / "nowhere", "fedll report", create=False) as path:
        assert path is None
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "a-file").write_text("x")
    refused = pytest.raises(DataError, match="is a file, not a directory")
    with refused, hold_run_dir(tmp_path / "a-file", "fedll run"):
        pass


@pytest.mark.slow
def test_two_runs_into_one_out_the_second_is_refused_and_the_first_finishes(
    tmp_path: Path, make_scenario, spawn_fedll
) -> None:
    """The hostile input itself: two ``fedll run`` of different settings into one ``--out``."""
    # enough epochs that the first still holds the run directory while the second starts
    first = make_scenario(
        tmp_path / "first.yaml", {"models": {"dycnn": None}, "training": {"epochs": 40}}
    )
    second = make_scenario(tmp_path / "second.yaml", {"training": {"epochs": 2}})
    run_dir = tmp_path / "run"
    one = spawn_fedll("run", str(first), "--out", str(run_dir), "--local")
    waited = time.monotonic()
    while not (run_dir / LOCK_FILE).exists():
        assert one.running(), one.stderr
        assert time.monotonic() - waited < 60, "the first run never took the lock"
        time.sleep(0.05)
    two = spawn_fedll("run", str(second), "--out", str(run_dir), "--local")
    assert two.wait(timeout=120) == 2, two.stderr
    assert f"in use by fedll run (pid {one.proc.pid}," in two.stderr, two.stderr
    assert one.wait(timeout=240) == 0, one.stderr
    trials = sorted(p.name for p in (run_dir / "trials").glob("*.json"))
    assert trials == ["static__alternating__b1__fedavg__finetune__s0.json"], trials
    assert "name: tiny" in (run_dir / "scenario.yaml").read_text()
    assert not (run_dir / LOCK_FILE).exists()


def test_a_serverapp_under_flwr_run_holds_the_run_directory_too(
    holder, tmp_path: Path, make_scenario
) -> None:
    """The ServerApp writes the run directory it is given (``flwr run``, deployment): into one
    another process holds it writes nothing, and says who holds it."""
    from fedll.federation.inprocess import InProcessGrid, run_server_app
    from sites.client_app import make_client_app
    from strategies.server_app import make_server_app

    run_dir, proc = holder
    scenario = make_scenario(tmp_path / "s.yaml")
    run_config = {"scenario": str(scenario), "run-dir": str(run_dir), "threads": 1}
    grid = InProcessGrid(make_client_app(), [], run_config, seed=0)
    before = _snapshot(run_dir)
    with pytest.raises(DataError, match=rf"in use by fedll run \(pid {proc.pid},"):
        run_server_app(make_server_app(), grid, run_config)
    assert _snapshot(run_dir) == before
