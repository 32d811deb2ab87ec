"""Where and with what a run was made: versions, git revision and the machine.

:func:`machine_provenance` gathers it without side effects (package versions are read from
their metadata); ``fedll run`` keeps it as ``RUN_DIR/provenance.json`` (:func:`write_provenance`),
which the report shows. Its ``arithmetic`` is the CPU's of the machine that prepared the cohort
(its synthesis and slices are computed there, and their last bits depend on it); each trial's
wall time and arithmetic are in its seal (:mod:`fedll.run.store`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import fedll
from fedll.atomic import atomic_path

logger = logging.getLogger(__name__)

PACKAGES: tuple[str, ...] = ("torch", "flwr", "ray", "numpy", "pandas")
FILE = "provenance.json"


def machine_provenance() -> dict[str, Any]:
    """fedll's version and git revision (None outside a checkout), Python's and each of
    :data:`PACKAGES`' versions (None where not installed), the platform, the CPU count and
    the CPU's arithmetic (:func:`fedll.run.device.arithmetic`)."""
    import torch

    from fedll.run.device import arithmetic

    return {
        "fedll": fedll.__version__,
        "git_revision": git_revision(Path(fedll.__file__).resolve().parent),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "arithmetic": arithmetic(torch.device("cpu")),
    }


def git_revision(path: Path) -> str | None:
    """The commit checked out at ``path`` (with ``-dirty`` for uncommitted changes), or None."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def write_provenance(run_dir: Path) -> Path:
    """Write ``run_dir/provenance.json`` (:func:`machine_provenance`) atomically."""
    path = Path(run_dir) / FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(machine_provenance(), indent=1, sort_keys=True))
    return path


def read_provenance(run_dir: Path) -> dict[str, Any] | None:
    """The run's provenance.json, or None where it is missing or unreadable."""
    path = Path(run_dir) / FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
