"""Finding and ending the processes a test started (a `fedll` command, Ray's daemons), by
session id and by a marker in their command lines."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil


def session_processes(sid: int, marker: str) -> list[psutil.Process]:
    """Processes in session ``sid`` or whose command line mentions ``marker`` (a Ray temp dir).

    Ray's daemons (gcs_server, raylet, workers) inherit the driver's session; their command
    lines also name the session directory under ``RAY_TMPDIR``.
    """
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            in_session = os.getsid(proc.pid) == sid
        except OSError:
            in_session = False
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.pid != os.getpid() and (in_session or marker in cmdline):
            found.append(proc)
    return found


def kill_session(sid: int, marker: str, grace: float = 10.0) -> list[psutil.Process]:
    """SIGKILL the process group ``sid`` and every process tied to it; returns survivors."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while (left := session_processes(sid, marker)) and time.monotonic() < deadline:
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=1.0)
    return [p for p in session_processes(sid, marker) if p.is_running()]
