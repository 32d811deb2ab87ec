"""Where and how a scenario's trials run and are tracked: the execution section (Ray, the
device, checkpoints) and the tracking section (TensorBoard, MLflow)."""

from __future__ import annotations

from pydantic import Field, field_validator

from fedll.config.base import Frozen as _Frozen
from fedll.run.device import check_device_name


class ExecutionConfig(_Frozen):
    """How the sweep uses the machine (or a Ray cluster)."""

    cpus_per_trial: int = Field(
        default=1, ge=1, description="CPUs a Ray trial asks for; torch uses as many threads"
    )
    max_concurrent: int | None = Field(
        default=None,
        ge=1,
        description="at most this many trials at a time (default: as many as the CPUs, and "
        "GPUs, hold)",
    )
    object_store_mb: int = Field(
        default=256, ge=64, description="the object store of a Ray that fedll run starts itself"
    )
    address: str | None = Field(
        default=None,
        description="a Ray cluster's address, HOST:PORT (default: a local Ray; fedll run "
        "--address overrides it)",
    )
    device: str = Field(
        default="auto", description="auto (CUDA when available), cpu, cuda or cuda:N"
    )
    gpus_per_trial: float | None = Field(
        default=None,
        gt=0,
        description="GPUs a Ray trial asks for (fractions share a GPU); default 1 when the "
        "device is CUDA, else 0",
    )
    deterministic: bool = Field(
        default=False, description="torch's deterministic algorithms and cuDNN settings"
    )
    checkpoint_every: int = Field(
        default=0, ge=0, description="keep the trial's whole state every N rounds (0: off)"
    )
    round_timeout: float | None = Field(
        default=None,
        gt=0,
        le=604_800,
        description="seconds a federated round waits for its sites (under flwr run and in "
        "deployment): for a site whose SuperNode is restarting to connect, then for the "
        "replies; a site that does not reply in time is recorded failed for the round and its "
        "late reply discarded (default: Flower's 3600 s, no wait to connect). A sweep's "
        "in-process grid computes each reply as it sends, so it plays no part there",
    )
    keep_models: bool = Field(
        default=True,
        description="keep each finished trial's final model in RUN_DIR/models (false: the "
        "tables alone, for a sweep whose models would fill the disk or a repository)",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device_name(value)

    max_parameters: int = Field(
        default=500_000_000, ge=1, description="refuse a model with more parameters"
    )
    max_activation_gb: float = Field(
        default=64.0,
        gt=0,
        description="refuse a model whose activations for one training batch exceed this",
    )


class TrackingConfig(_Frozen):
    """Where the driver also logs each finished trial, from the collected results after the
    sweep (:mod:`fedll.tracking`). It does not change results, so it is no part of a trial's
    fingerprint. Both need the optional packages of ``pip install 'fedll[tracking]'``; ``fedll
    run`` checks them (:func:`fedll.tracking.check_installed`), the schema does not, so that a
    Ray worker without them still reads the scenario."""

    tensorboard: bool = Field(
        default=False,
        description="write TensorBoard event files per trial in RUN_DIR/tensorboard/<trial id>/",
    )
    mlflow: bool | str | None = Field(
        default=None,
        description="log each trial as an MLflow run: a tracking URI, or true for a local "
        "store in RUN_DIR/mlruns",
    )

    @field_validator("mlflow")
    @classmethod
    def _uri(cls, value: bool | str | None) -> bool | str | None:
        if value is False:
            return None
        if isinstance(value, str) and not value.strip():
            raise ValueError("an MLflow tracking URI, true (a local store) or null")
        return value
