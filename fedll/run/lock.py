"""One process at a time in a run directory: an OS lock held while a command writes there.

``fedll run`` and ``fedll report`` (and a ServerApp under ``flwr run``) write a run
directory's scenario, trials, results and tables; two of them at once in one directory mix
two runs' files (trials of one under the other's ``scenario.yaml``, a finished trial written
over, a report built from half a results file). Each holds ``RUN_DIR/.fedll.lock`` for as long
as it works there: an exclusive ``flock`` on the file, which the OS releases when the process
ends however it ends (a crash or ``kill -9`` leaves no stale lock). The file names the holder
(pid, command, host, start time); a second process is refused at once with one line naming
it. The holder removes the file when it lets go.

``flock`` locks are advisory and per open file: two handles of one process exclude each other
too, and a run directory on a network file system without ``flock`` support (some NFS set-ups)
is not protected.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedll.errors import DataError

LOCK_FILE = ".fedll.lock"


@contextmanager
def hold_run_dir(run_dir: Path, command: str, create: bool = True) -> Iterator[Path | None]:
    """Hold ``run_dir``'s lock while the block runs (the folder is made where missing, unless
    not ``create``: then a missing folder has nothing to protect and the block runs without a
    lock, yielding None); DataError naming the holder when another process holds it."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise DataError(f"{run_dir}: is a file, not a directory")
    if not create and not run_dir.exists():
        yield None
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = _acquire(path, run_dir)
    try:
        holder = {
            "pid": os.getpid(),
            "command": command,
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        yield path
    finally:
        # unlink while still holding the lock: a process waiting on the old file sees it gone
        # (_acquire checks) and makes a new one, never two holders at once
        path.unlink(missing_ok=True)
        os.close(fd)


def _acquire(path: Path, run_dir: Path) -> int:
    """An open descriptor of ``path`` that holds its exclusive lock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataError(f"{run_dir}: in use by {_holder(path)}; wait for it to end, or "
                            "choose another run directory") from None  # fmt: skip
        except OSError as error:
            os.close(fd)
            raise DataError(f"{path}: cannot be locked ({error.strerror})") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # its holder removed it as we locked it
            same = False
        if same:
            return fd
        os.close(fd)


def _holder(path: Path) -> str:
    """The holder's command and pid as its lock file names them."""
    try:
        held = json.loads(path.read_text())
        where = f" on {held['host']}" if held.get("host") != socket.gethostname() else ""
        return f"{held['command']} (pid {held['pid']}{where}, since {held['started']})"
    except (OSError, ValueError, KeyError, TypeError):  # written as we read it
        return "another fedll process"
