"""Is the tracking target there? Checked before a sweep, in seconds, creating nothing.

MLflow, asked to log to a store it cannot reach, retries for minutes (an unreachable server:
~255 s) and, for a SQLite URI, creates the database's folder wherever the URI points. A sweep
that has run for an hour must not end that way, so ``fedll run`` checks the target first
(:func:`check_target`), in at most :data:`TIMEOUT_S` seconds, and refuses with one line naming
``tracking.mlflow``:

- ``true``: the run directory's own store, ``RUN_DIR/mlruns``: that folder (or, before it
  exists, the nearest folder above it that does) must take a file;
- ``sqlite:///PATH``: PATH's folder must exist (fedll creates no folder outside the run
  directory) and take a file, and an existing database must be writable;
- ``file:`` URIs and plain paths (MLflow's file store): the store, or the folder it would be
  made in, must exist and take a file;
- ``http(s)://``: the server must answer an HTTP request within the time limit (any answer
  counts: a login page still shows the server is there);
- any other scheme (``databricks``, a SQL server): left to MLflow, which fedll cannot reach
  without its credentials.

"Takes a file" is tried by creating and removing a hidden file: permission bits alone say
nothing to root, and a read-only mount refuses root too.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from fedll.config.schema import TrackingConfig
from fedll.errors import ConfigError

TIMEOUT_S = 8.0
"""Seconds an HTTP tracking server has to answer."""


def check_target(run_dir: Path, tracking: TrackingConfig, source: str) -> None:
    """ConfigError (``SOURCE: tracking.mlflow: ...``) where ``tracking.mlflow`` names a store
    that cannot be written or a server that does not answer."""
    if not tracking.mlflow:
        return
    problem = _problem(Path(run_dir), tracking.mlflow)
    if problem:
        raise ConfigError(f"{source}: tracking.mlflow: {problem}")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (None for another URI)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///") :]))


def _problem(run_dir: Path, mlflow: bool | str) -> str | None:
    if mlflow is True:
        store = run_dir / "mlruns"
        return _writable(next(p for p in (store, *store.parents) if p.exists()))
    uri = str(mlflow)
    if (database := sqlite_path(uri)) is not None:
        if not database.parent.is_dir():
            return f"{uri}: the folder {database.parent} does not exist (fedll creates none)"
        if database.exists():
            return _writable_database(database)
        return _writable(database.parent)
    scheme = urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        return _answers(uri)
    if scheme in ("", "file"):
        store = Path(unquote(urlparse(uri).path)) if scheme == "file" else Path(uri)
        if store.exists():
            return _writable(store)
        if not store.parent.is_dir():
            return f"{uri}: the folder {store.parent} does not exist (fedll creates none)"
        return _writable(store.parent)
    return None


def _writable(folder: Path) -> str | None:
    """Why ``folder`` does not take a new file (None: it does)."""
    if not folder.is_dir():
        return f"{folder}: not a folder"
    probe = folder / f".fedll-probe-{uuid.uuid4().hex[:12]}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        return f"{folder}: cannot be written ({error.strerror})"
    os.close(fd)
    probe.unlink()
    return None


def _writable_database(database: Path) -> str | None:
    """Why SQLite cannot write to ``database`` (None: it can); the file is not changed."""
    try:
        connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=rw", uri=True, timeout=2)
        try:
            connection.execute("BEGIN IMMEDIATE")  # takes the write lock, writes nothing
            connection.rollback()
        finally:
            connection.close()
    except sqlite3.Error as error:
        return f"{database}: cannot be written ({error})"
    return None


def _answers(uri: str) -> str | None:
    """Why the HTTP server at ``uri`` did not answer in :data:`TIMEOUT_S` (None: it did)."""
    request = urllib.request.Request(uri.rstrip("/") + "/health", method="GET")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S):
            return None
    except urllib.error.HTTPError:  # an answer, if not the one hoped for: the server is there
        return None
    except (urllib.error.URLError, OSError, ValueError) as error:  # ValueError: a bad port
        reason = getattr(error, "reason", error)
        return f"{uri}: no answer within {TIMEOUT_S:.0f} s ({reason})"
