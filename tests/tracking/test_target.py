"""The tracking target is checked before a sweep, in seconds, and nothing is created outside
the run directory: an unreachable MLflow server, a SQLite URI into a missing folder and a store
that cannot be written are one line naming ``tracking.mlflow``."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedll.cli import app
from fedll.config.schema import TrackingConfig
from fedll.errors import ConfigError
from fedll.tracking import check_target, mlflow_target


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 that answers every request with 404."""
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _check(run_dir: Path, mlflow: bool | str) -> None:
    check_target(run_dir, TrackingConfig(mlflow=mlflow), "s.yaml")


def test_a_server_that_answers_passes_and_one_that_does_not_is_refused(server, tmp_path) -> None:
    _check(tmp_path, server)  # a 404 is an answer: the server is there
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ConfigError, match=rf"^s.yaml: tracking.mlflow: {uri}: no answer"):
        _check(tmp_path, uri)


def test_a_sqlite_store_in_a_missing_folder_is_refused_and_the_folder_not_made(tmp_path) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    with pytest.raises(ConfigError, match=rf"the folder {missing} does not exist"):
        _check(tmp_path, f"sqlite:///{missing}/m.db")
    assert not (tmp_path / "nonexistent").exists()
    _check(tmp_path, f"sqlite:///{tmp_path}/m.db")  # a new database in a folder that exists
    assert list(tmp_path.iterdir()) == []  # the probe is gone, nothing was created


def test_stores_that_cannot_be_written_are_refused(tmp_path) -> None:
    # /proc takes no new file, not even from root (permission bits would not stop root)
    with pytest.raises(ConfigError, match=r"/proc: cannot be written"):
        _check(tmp_path, "sqlite:////proc/m.db")
    with pytest.raises(ConfigError, match=r"/proc: cannot be written"):
        _check(tmp_path, "file:///proc/mlruns")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mlruns").write_text("a file where the store goes")
    with pytest.raises(ConfigError, match=r"mlruns: not a folder"):
        _check(tmp_path / "run", True)
    _check(tmp_path / "new-run", True)  # a run directory still to be made: its parent takes it


def test_an_existing_database_is_checked_for_writing_without_a_change(tmp_path) -> None:
    import sqlite3

    database = tmp_path / "m.db"
    with sqlite3.connect(database) as db:
        db.execute("create table t (x)")
    before = database.read_bytes()
    _check(tmp_path, f"sqlite:///{database}")
    assert database.read_bytes() == before
    (tmp_path / "not-a-db").write_text("garbage " * 100)
    with pytest.raises(ConfigError, match=r"not-a-db: cannot be written"):
        _check(tmp_path, f"sqlite:///{tmp_path / 'not-a-db'}")


def test_a_sqlite_store_keeps_its_artifacts_beside_it(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/shared/m.db"
    assert mlflow_target(tmp_path / "run", TrackingConfig(mlflow=uri)) == (
        uri, (tmp_path / "shared" / "mlartifacts").as_uri()
    )  # fmt: skip


def test_fedll_run_refuses_an_unreachable_server_before_any_trial(tmp_path, make_scenario) -> None:
    scenario = make_scenario(tmp_path / "s.yaml")
    run_dir = tmp_path / "run"
    uri = f"http://127.0.0.1:{_closed_port()}"
    result = CliRunner().invoke(
        app, ["run", str(scenario), "--out", str(run_dir), "--local", "--set",
              f"tracking.mlflow={uri}"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"tracking.mlflow: {uri}: no answer" in lines[0], result.stderr
    assert not run_dir.exists()
