"""A site's lifelong state on its own disk, so that it survives a restart of its SuperNode or
of the whole federation.

What a site keeps between its rounds (optimiser moments, a replay buffer, an EWC Fisher and
anchor, SCAFFOLD's control variate, Ditto's personalised model) lives in its Flower context
state (``sites/client_app.py``), which a real SuperNode holds in memory. After every round it
trains, a deployed site (and a site of Flower's Simulation Engine) also writes that state to
``STATE_DIR/<trial id>.<fingerprint>.state`` (:class:`SiteStateStore`), and a site whose
context state is empty (its SuperNode restarted, or the ServerApp resumed the trial under a
new Flower run) reloads it before it trains.

Binding. The state is bound to the :class:`~fedll.config.instruction.StateKey` the server sends
in every train instruction: the scenario's trial id and fingerprint (as the server's own
checkpoint is) and the *federation*: the Flower run id of the ``flwr run`` that started the
trial, which the server keeps in its checkpoint and sends again when it resumes. Flower's
current run id is not the key: re-issuing ``flwr run`` after a crash starts a new Flower run,
and the state must carry over into it. A fresh run of the same trial (no server checkpoint)
has a new federation id, so it never picks up the state an earlier run left. A state whose
key differs is logged and ignored, never mixed in.

History. The file holds the states after the site's last two rounds. A server resumed from
its checkpoint of round k sends round k + 1 again, and a site that had already trained round
k + 1 must start it again from the state it had before: a reload takes the newest state of a
round *before* the round asked. The server checkpoints every round before it sends the next,
so two states suffice.

Format: one Flower ``RecordDict`` as plain data
(:func:`fedll.federation.records.records_to_bytes`, as a checkpoint stores a simulated site's
state; a file of format 1, an earlier fedll's, in Flower's wire format, is still read): a
ConfigRecord ``header`` (format, version, site, trial, fingerprint, federation, the rounds
held) and each state's records named ``<round>/<name>``. It is written atomically (a
temporary file, fsync, rename) with mode 0600 in a directory of mode 0700: it is derived from
the site's patients' data.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, RecordDict

import fedll
from fedll.atomic import atomic_path
from fedll.config.instruction import StateKey
from fedll.errors import ConfigError, DataError
from fedll.federation.records import records_from_bytes, records_to_bytes

logger = logging.getLogger(__name__)

FORMAT = "fedll-site-state"
VERSION = 2
READS = (1, 2)
"""The formats this fedll reads: 2 (plain data, :mod:`fedll.federation.records`) and 1
(Flower's wire format, written by an earlier fedll)."""
HEADER = "header"
KEPT = 2
"""States kept: the last round's and the one before (see the module docstring)."""
DATA_DIR_FOLDER = ".fedll-state"
"""A deployed site's state folder inside its data dir, unless ``state-dir`` names another."""
RUN_DIR_FOLDER = "site-state"
"""A simulated site's state folder in the run directory (``RUN_DIR/site-state/<site>``)."""


def site_state_dir(
    node_config: Mapping[str, Any], run_config: Mapping[str, Any], site: str
) -> Path | None:
    """Where a site read from its node config or the run directory keeps its state: a
    deployed site (``data-dir`` in its node config) in its ``state-dir``, by default
    ``<data-dir>/.fedll-state``; a site of the Simulation Engine in ``RUN_DIR/site-state/
    <site>``; None without either (nothing to keep it on)."""
    if "data-dir" in node_config:
        if chosen := str(node_config.get("state-dir") or ""):
            return Path(chosen).expanduser()
        return Path(str(node_config["data-dir"])).expanduser() / DATA_DIR_FOLDER
    if "run-dir" in run_config:
        return Path(str(run_config["run-dir"])) / RUN_DIR_FOLDER / site
    return None


def check_state_dir(path: Path, what: str) -> Path:
    """``path`` resolved, when this process can create it or write in it; ConfigError naming
    ``what`` otherwise. Nothing is created."""
    path = Path(path).expanduser().resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {existing} is not writable")
    return path


class SiteStateStore:
    """One site's kept states in ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path, site: str) -> None:
        self.directory = Path(directory)
        self.site = site

    def path(self, key: StateKey) -> Path:
        return self.directory / f"{key.trial}.{key.fingerprint}.state"

    def load(self, key: StateKey, before_round: int) -> tuple[int, RecordDict] | None:
        """The newest state kept for ``key`` from a round before ``before_round``, and that
        round; None (the reason logged) when there is none."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            states = self._read(path, key)
        except DataError as error:
            logger.warning("site %s: %s; ignored", self.site, error)
            return None
        earlier = [r for r in states if r < before_round]
        if not earlier:
            logger.info(
                "site %s: %s holds rounds %s, none before round %d; ignored",
                self.site, path, sorted(states), before_round,
            )  # fmt: skip
            return None
        return max(earlier), states[max(earlier)]

    def save(self, key: StateKey, server_round: int, state: RecordDict) -> Path:
        """Keep ``state`` as the state after ``server_round``, beside the newest earlier one;
        states of later rounds (a round the server runs again) are dropped. DataError when
        it cannot be written."""
        path = self.path(key)
        states: dict[int, RecordDict] = {}
        if path.is_file():
            try:
                states = self._read(path, key)
            except DataError as error:
                logger.warning("site %s: %s; replaced", self.site, error)
        earlier = [r for r in states if r < server_round]
        kept = {r: states[r] for r in sorted(earlier)[-(KEPT - 1) :]}
        kept[server_round] = state
        try:
            _write_private(path, self._encode(key, kept))
        except OSError as error:
            raise DataError(f"site {self.site}: cannot keep its state in {path}: {error}") from None
        return path

    def _encode(self, key: StateKey, states: Mapping[int, RecordDict]) -> bytes:
        header = {
            "format": FORMAT,
            "version": VERSION,
            "fedll": fedll.__version__,
            "site": self.site,
            "trial": key.trial,
            "fingerprint": key.fingerprint,
            "federation": key.federation,
            "rounds": sorted(states),
        }
        records: dict[str, Any] = {HEADER: ConfigRecord(header)}
        for rnd, state in states.items():
            records.update({f"{rnd}/{name}": record for name, record in state.items()})
        return records_to_bytes(RecordDict(records))

    def _read(self, path: Path, key: StateKey) -> dict[int, RecordDict]:
        """The states in ``path`` by round; DataError when it is not a site state of this
        site and ``key``."""
        try:
            records = records_from_bytes(path.read_bytes())
            header = dict(records[HEADER])
        except (OSError, KeyError, TypeError, ValueError) as error:
            raise DataError(f"{path}: not a fedll site state ({type(error).__name__})") from None
        if header.get("format") != FORMAT or header.get("version") not in READS:
            raise DataError(
                f"{path}: not a site state this fedll reads ({header.get('format')} "
                f"{header.get('version')})"
            )
        expected = {"site": self.site, "trial": key.trial, "fingerprint": key.fingerprint,
                    "federation": key.federation}  # fmt: skip
        for name, value in expected.items():
            if header.get(name) != value:
                raise DataError(f"{path}: kept for {name} {header.get(name)!r}, not {value!r}")
        states: dict[int, RecordDict] = {int(r): RecordDict() for r in header["rounds"]}
        for name, record in records.items():
            rnd, sep, own = name.partition("/")
            if sep and rnd.isdigit() and int(rnd) in states:
                states[int(rnd)][own] = record
        return states


def _write_private(path: Path, data: bytes) -> None:
    """``data`` to ``path`` atomically and durably, readable by this user only (0600, in a
    directory created 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    with contextlib.suppress(OSError):  # the rename itself, durably (not on every platform)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
