"""A trial as an MLflow run (mlflow-skinny, imported when used).

The run is tagged with the trial id and fingerprint (:data:`TRIAL_TAG`,
:data:`FINGERPRINT_TAG`), so the store itself says which trials it holds: a trial whose run is
there (finished) is not logged again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedll.tracking.series import TrialSeries

if TYPE_CHECKING:
    from mlflow import MlflowClient

TRIAL_TAG = "fedll.trial"
FINGERPRINT_TAG = "fedll.fingerprint"


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created where missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def logged_trials(client: MlflowClient, experiment: str) -> dict[str, str]:
    """trial id -> fingerprint of the finished fedll runs of ``experiment``."""
    runs = client.search_runs(
        [experiment], filter_string="attributes.status = 'FINISHED'", max_results=50_000
    )
    return {
        r.data.tags[TRIAL_TAG]: r.data.tags.get(FINGERPRINT_TAG, "")
        for r in runs
        if TRIAL_TAG in r.data.tags
    }


def log_run(
    client: MlflowClient, experiment: str, series: TrialSeries, fingerprint: str,
    artifacts: Sequence[tuple[Path, str]] = (),
) -> str:  # fmt: skip
    """Log one trial as a run of ``experiment`` (params, per-round metrics, the final
    measures, the switches and ``artifacts``: (file, folder in the run)); returns its id.
    The run is marked FINISHED last, so an interrupted one is logged again."""
    from mlflow.entities import Metric, Param

    run = client.create_run(
        experiment,
        run_name=series.trial,
        tags={TRIAL_TAG: series.trial, FINGERPRINT_TAG: fingerprint},
    )
    run_id = run.info.run_id
    metrics = [
        Metric(key=_key(tag), value=value, timestamp=0, step=step)
        for tag, values in series.scalars.items()
        for step, value in values
        if math.isfinite(value)
    ]
    metrics += [Metric(key=f"final/{_key(t)}", value=v, timestamp=0, step=0)
                for t, v in series.final.items()]  # fmt: skip
    params = [Param(k, v) for k, v in series.params.items()]
    for start in range(0, max(len(metrics), 1), 900):  # MLflow takes 1000 entries a batch
        client.log_batch(
            run_id, metrics=metrics[start : start + 900], params=params if start == 0 else []
        )
    if series.switches:
        text = "".join(f"round {t}: {s}\n" for t, s in series.switches)
        client.log_text(run_id, text, "modality_switches.txt")
    for path, folder in artifacts:
        if Path(path).is_file():
            client.log_artifact(run_id, str(path), folder)
    client.set_terminated(run_id)
    return run_id


def _key(tag: str) -> str:
    """An MLflow metric name: letters, digits, ``_-./`` and spaces only."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in tag)
