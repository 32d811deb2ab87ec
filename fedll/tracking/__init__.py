"""Tracking a run in the tools researchers already use: TensorBoard and MLflow.

The driver logs each finished trial after the sweep, from the collected results (so trials
that ran as Ray tasks on other machines are logged like local ones), as the scenario's
``tracking`` section asks (:class:`fedll.config.TrackingConfig`):

- ``tensorboard: true``: event files per trial in ``RUN_DIR/tensorboard/<trial id>/``; the
  trials written are listed with their fingerprints in ``RUN_DIR/tensorboard/logged.json``;
- ``mlflow: URI`` (or ``true``: a store of the run's own, ``RUN_DIR/mlruns``): one MLflow run
  per trial in the experiment named after the scenario, tagged with the trial id and
  fingerprint, which the store is asked for before logging; its artifacts are the trial's
  files, its summary rows and the plots that show it.

A resumed run logs only the trials not logged yet. What is logged is
:func:`fedll.tracking.series.trial_series`. The packages are optional
(``pip install 'fedll[tracking]'``) and imported only when asked for.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from importlib.util import find_spec
from pathlib import Path

import pandas as pd

from fedll.atomic import atomic_path
from fedll.config.schema import TrackingConfig
from fedll.errors import ConfigError
from fedll.report.plots import plot_files
from fedll.report.read import maybe_compressed, read_attention, read_results
from fedll.results.columns import config_columns
from fedll.tracking.series import TrialSeries, trial_series
from fedll.tracking.target import check_target, sqlite_path

logger = logging.getLogger(__name__)

INSTALL = "pip install 'fedll[tracking]'"
TENSORBOARD_DIR = "tensorboard"
LOGGED = "logged.json"

__all__ = [
    "INSTALL",
    "TrialSeries",
    "check_installed",
    "check_target",
    "log_trials",
    "mlflow_target",
    "trial_series",
]


def check_installed(tracking: TrackingConfig, source: str) -> None:
    """ConfigError naming ``tracking.tensorboard`` or ``tracking.mlflow`` and the pip command
    where the scenario asks for a tracker whose package is not installed."""
    wanted = {"tensorboard": ["tensorboardX"] if tracking.tensorboard else []}
    if tracking.mlflow:
        local = tracking.mlflow is True or str(tracking.mlflow).startswith("sqlite:")
        sql = ["sqlalchemy", "alembic"] if local else []  # MLflow's SQL store
        wanted["mlflow"] = ["mlflow", *sql]
    for key, modules in wanted.items():
        missing = [m for m in modules if find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"{source}: tracking.{key}: needs {', '.join(missing)}, not installed ({INSTALL})"
            )


def mlflow_target(run_dir: Path, tracking: TrackingConfig) -> tuple[str, str | None]:
    """The tracking URI and the artifact location (None: the store's default) of
    ``tracking.mlflow``: a given URI, or for ``true`` the run directory's own store
    (SQLite in ``RUN_DIR/mlruns``: MLflow 3 refuses its plain-file store by default). A
    ``sqlite:///PATH`` store keeps its artifacts beside it, in ``mlartifacts/`` (MLflow's
    default would be ``./mlruns`` in whatever folder fedll was started from)."""
    if tracking.mlflow is True:
        store = Path(run_dir).resolve() / "mlruns"
        return f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()
    uri = str(tracking.mlflow)
    if (database := sqlite_path(uri)) is not None:
        return uri, (database.parent.resolve() / "mlartifacts").as_uri()
    return uri, None


def log_trials(
    run_dir: Path, experiment: str, tracking: TrackingConfig, fingerprints: Mapping[str, str],
    summary: pd.DataFrame | None = None,
) -> dict[str, list[str]]:  # fmt: skip
    """Log the finished trials of ``fingerprints`` (trial id -> fingerprint) found in
    ``RUN_DIR/results.csv`` that each tracker does not hold yet; returns tracker ->
    trial ids logged now. ``summary`` (:func:`fedll.report.trial_summary`) adds each
    trial's final measures."""
    run_dir = Path(run_dir)
    logged: dict[str, list[str]] = {}
    if not (tracking.tensorboard or tracking.mlflow):
        return logged
    results = read_results(maybe_compressed(run_dir / "results.csv"))
    attention_path = maybe_compressed(run_dir / "attention.csv")
    attention = read_attention(attention_path) if attention_path.exists() else None
    present = set(results["trial"])
    trials = {t: f for t, f in fingerprints.items() if t in present}

    def series(trial: str) -> TrialSeries:
        rows = results[results["trial"] == trial]
        att = None if attention is None else attention[attention["trial"] == trial]
        own = None if summary is None else summary[summary["trial"] == trial]
        return trial_series(rows, att, own)

    if tracking.tensorboard:
        logged["tensorboard"] = _log_tensorboard(run_dir, trials, series)
    if tracking.mlflow:
        keys = config_columns(results)

        def artifacts(trial: str) -> list[tuple[Path, str]]:
            trial_files = [
                (run_dir / "trials" / f"{trial}{suffix}", "trial")
                for suffix in (".csv", ".attention.csv", ".json")
            ]
            plots = plot_files(series(trial).params, keys)
            return trial_files + [(run_dir / "plots" / name, "plots") for name in plots]

        logged["mlflow"] = _log_mlflow(
            run_dir, experiment, tracking, trials, series, artifacts, summary
        )
    return logged


def _log_tensorboard(
    run_dir: Path, trials: Mapping[str, str], series: Callable[[str], TrialSeries]
) -> list[str]:
    from fedll.tracking.tensorboard_events import write_events

    root = run_dir / TENSORBOARD_DIR
    record_path = root / LOGGED
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    done = []
    for trial, fingerprint in trials.items():
        if record.get(trial) == fingerprint and (root / trial).is_dir():
            continue
        write_events(root / trial, series(trial))
        record[trial] = fingerprint
        with atomic_path(record_path) as tmp:  # after each trial: an interruption loses none
            tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        done.append(trial)
    logger.info("TensorBoard: %d trial(s) written to %s", len(done), root)
    return done


def _log_mlflow(
    run_dir: Path, experiment: str, tracking: TrackingConfig, trials: Mapping[str, str],
    series: Callable[[str], TrialSeries], artifacts: Callable[[str], list[tuple[Path, str]]],
    summary: pd.DataFrame | None,
) -> list[str]:  # fmt: skip
    from mlflow import MlflowClient

    from fedll.tracking.mlflow_runs import experiment_id, log_run, logged_trials

    uri, artifact_location = mlflow_target(run_dir, tracking)
    if tracking.mlflow is True:
        (run_dir / "mlruns").mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    exp = experiment_id(client, experiment, artifact_location)
    held = logged_trials(client, exp)
    done = []
    with tempfile.TemporaryDirectory() as tmp:
        for trial, fingerprint in trials.items():
            if held.get(trial) == fingerprint:
                continue
            files = artifacts(trial)
            if summary is not None:
                own = Path(tmp) / trial / "summary.csv"
                own.parent.mkdir()
                summary[summary["trial"] == trial].to_csv(own, index=False)
                files.append((own, "tables"))
            log_run(client, exp, series(trial), fingerprint, files)
            done.append(trial)
    logger.info("MLflow: %d trial(s) logged to %s", len(done), uri)
    return done
