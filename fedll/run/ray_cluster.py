"""Ray for a sweep: the cluster's address checked, Ray sized and started, GPUs per trial.

Ray is sized explicitly: ``num_cpus`` of the machine (or the cluster's), an object store
of ``object_store_mb``, no dashboard, and ``cpus_per_trial`` CPUs (``num_gpus``: see
:func:`trial_gpus`) per actor with torch using as many threads.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fedll.config import Scenario
from fedll.errors import ConfigError

if TYPE_CHECKING:
    from fedll.run.sweep import SweepOptions


def trial_gpus(scenario: Scenario, options: SweepOptions) -> float:
    """GPUs per Ray trial: ``execution.gpus_per_trial``, else 1 when the trials' device is
    CUDA (``auto``: when the cluster has GPUs), else 0. ConfigError when the device asks for
    CUDA and the cluster has no GPU (call with Ray initialised)."""
    import ray

    execution = scenario.execution
    cluster = float(ray.cluster_resources().get("GPU", 0))
    if execution.device == "cpu":
        return 0.0
    if execution.device == "auto":
        return (execution.gpus_per_trial or 1.0) if cluster > 0 else 0.0
    if cluster <= 0:
        where = options.address or "this machine"
        raise ConfigError(
            f"execution.device: {execution.device} asked, but the Ray cluster at {where} "
            "has no GPU; use auto or cpu"
        )
    return execution.gpus_per_trial or 1.0


def check_address(address: str, timeout: float = 10.0) -> None:
    """ConfigError within ``timeout`` seconds when nothing listens at a Ray ``--address``
    (``HOST:PORT`` or ``ray://HOST:PORT``; ``auto`` is left to Ray), instead of Ray's minutes
    of retries."""
    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--address {address}: expected HOST:PORT (or ray://HOST:PORT, auto)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({reason})") from None


def ray_init_kwargs(options: SweepOptions) -> dict[str, Any]:
    """Explicit Ray sizing (its defaults take a third of the machine for the object store)."""
    if options.address:
        return {"address": options.address, "log_to_driver": False}
    return {
        "num_cpus": os.cpu_count() or 1,
        "object_store_memory": options.object_store_mb * 2**20,
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }


@contextmanager
def ray_session(options: SweepOptions) -> Iterator[None]:
    """Ray for the sweep: the running one, or one started here and shut down after."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        with warnings.catch_warnings():
            # a tip about GPU env vars; fedll asks Ray for no GPUs
            warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
            ray.init(**ray_init_kwargs(options))
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()
