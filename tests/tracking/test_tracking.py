"""Tracking: the series of a trial worked out by hand, TensorBoard event files and MLflow runs
read back, and a second logging of the same run that logs nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedll.config import TrackingConfig
from fedll.errors import ConfigError
from fedll.report import check_results, trial_summary
from fedll.results.columns import REQUIRED_RESULT_COLUMNS
from fedll.tracking import check_installed, log_trials, mlflow_target, trial_series
from fedll.tracking.series import attention_entropy, modality_switches

# rounds 0..2 x (t2, flair); round 1 trains t2, round 2 flair
MATRICES = {"static-s0": [[0.1, 0.2], [0.8, 0.3], [0.5, 0.7]],
            "dycnn-s0": [[0.0, 0.0], [0.7, 0.2], [0.6, 0.6]]}  # fmt: skip
FINGERPRINTS = {"static-s0": "fp-static", "dycnn-s0": "fp-dycnn"}


def make_results() -> pd.DataFrame:
    rows = []
    for trial, R in MATRICES.items():
        for t, row in enumerate(R):
            for modality, r in zip(("t2", "flair"), row, strict=True):
                rows.append(
                    {"trial": trial, "model": trial.split("-")[0], "ordering": "blocked",
                     "arrival_batch": 2, "strategy": "fedavg", "seed": 0, "round": t,
                     "sites": ["", "a", "b"][t], "arriving": ["", "t2", "flair"][t],
                     "modality": modality, "case": f"{modality}-p1", "dice": r}
                )  # fmt: skip
    frame = pd.DataFrame(rows, columns=list(REQUIRED_RESULT_COLUMNS))
    frame["failed"] = np.where(frame["round"] == 2, "b", "")
    frame["rejected"] = ""
    return frame


def make_attention() -> pd.DataFrame:
    masses = {("t2", "enc1"): [2, 2, 0, 0], ("flair", "enc1"): [0, 1, 1, 0],
              ("t2", "enc2"): [0.25] * 4, ("flair", "enc2"): [0.25] * 4}  # fmt: skip
    rows = [
        {"trial": "dycnn-s0", "model": "dycnn", "ordering": "blocked", "arrival_batch": 2,
         "strategy": "fedavg", "seed": 0, "round": t, "modality": modality, "layer": layer,
         "kernel": k, "mass": value}
        for t in range(3)
        for (modality, layer), mass in masses.items()
        for k, value in enumerate(mass)
    ]  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    make_results().to_csv(tmp_path / "results.csv", index=False)
    make_attention().to_csv(tmp_path / "attention.csv", index=False)
    return tmp_path


def test_trial_series_by_hand() -> None:
    results = check_results(make_results())
    static = results[results["trial"] == "static-s0"]
    series = trial_series(static, None, trial_summary(static))
    assert series.trial == "static-s0"
    assert series.params["model"] == "static" and series.params["arrival_batch"] == "2"
    assert series.scalars["dice/T2"] == [(0, 0.1), (1, 0.8), (2, 0.5)]
    assert series.scalars["dice/FLAIR"] == [(0, 0.2), (1, 0.3), (2, 0.7)]
    assert series.scalars["updates/failed"] == [(0, 0.0), (1, 0.0), (2, 1.0)]
    assert series.switches == [(2, "T2 -> FLAIR")]
    assert series.final["final_dice/T2"] == pytest.approx(0.5)
    assert series.final["forgetting_max/T2"] == pytest.approx(0.3)  # 0.8 -> 0.5


def test_attention_entropy_by_hand() -> None:
    entropy = attention_entropy(make_attention())
    assert entropy["attention_entropy/enc1/T2"] == [(t, pytest.approx(np.log(2))) for t in range(3)]
    assert entropy["attention_entropy/enc2/FLAIR"][0] == (0, pytest.approx(np.log(4)))


def test_modality_switches_skip_rounds_without_training() -> None:
    t2, flair = frozenset({0}), frozenset({1})
    assert modality_switches([frozenset(), t2, frozenset(), t2, flair, t2 | flair]) == [
        (4, "T2 -> FLAIR"),
        (5, "FLAIR -> T2+FLAIR"),
    ]


def test_check_installed_names_the_key_and_the_pip_command(monkeypatch) -> None:
    import fedll.tracking as tracking

    monkeypatch.setattr(tracking, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"s.yaml: tracking.tensorboard: needs tensorboardX"):
        check_installed(TrackingConfig(tensorboard=True), "s.yaml")
    with pytest.raises(ConfigError, match=r"tracking.mlflow: .*pip install 'fedll\[tracking\]'"):
        check_installed(TrackingConfig(mlflow=True), "s.yaml")
    check_installed(TrackingConfig(), "s.yaml")  # nothing asked, nothing needed


def test_mlflow_target(tmp_path: Path) -> None:
    uri, artifacts = mlflow_target(tmp_path, TrackingConfig(mlflow=True))
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert artifacts == (tmp_path.resolve() / "mlruns" / "artifacts").as_uri()
    assert mlflow_target(tmp_path, TrackingConfig(mlflow="http://x:5000")) == (
        "http://x:5000", None
    )  # fmt: skip


def test_nothing_asked_logs_nothing(run_dir: Path) -> None:
    assert log_trials(run_dir, "s", TrackingConfig(), FINGERPRINTS) == {}
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "mlruns").exists()


def test_tensorboard_event_files_hold_the_dice_curves_and_are_written_once(run_dir: Path) -> None:
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed (fedll[tracking])")
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard (to read event files) is not installed",
    )
    tracking = TrackingConfig(tensorboard=True)
    assert log_trials(run_dir, "s", tracking, FINGERPRINTS) == {
        "tensorboard": ["static-s0", "dycnn-s0"]
    }
    for trial, R in MATRICES.items():
        events = accumulator.EventAccumulator(str(run_dir / "tensorboard" / trial))
        events.Reload()
        for m, label in enumerate(("T2", "FLAIR")):
            read = [(e.step, e.value) for e in events.Scalars(f"dice/{label}")]
            assert [s for s, _ in read] == [0, 1, 2]
            np.testing.assert_allclose([v for _, v in read], [row[m] for row in R], rtol=1e-6)
    events = accumulator.EventAccumulator(str(run_dir / "tensorboard" / "dycnn-s0"))
    events.Reload()
    assert "attention_entropy/enc1/T2" in events.Tags()["scalars"]
    record = json.loads((run_dir / "tensorboard" / "logged.json").read_text())
    assert record == FINGERPRINTS
    files = sorted((run_dir / "tensorboard").rglob("events.*"))
    assert log_trials(run_dir, "s", tracking, FINGERPRINTS) == {"tensorboard": []}  # resumed
    assert sorted((run_dir / "tensorboard").rglob("events.*")) == files


def test_mlflow_store_holds_one_run_per_trial_and_is_not_logged_twice(run_dir: Path) -> None:
    pytest.importorskip("mlflow", reason="mlflow-skinny is not installed (fedll[tracking])")
    pytest.importorskip("sqlalchemy", reason="sqlalchemy is not installed (fedll[tracking])")
    from mlflow import MlflowClient

    tracking = TrackingConfig(mlflow=True)
    summary = trial_summary(make_results())
    assert log_trials(run_dir, "handmade", tracking, FINGERPRINTS, summary) == {
        "mlflow": ["static-s0", "dycnn-s0"]
    }
    client = MlflowClient(tracking_uri=mlflow_target(run_dir, tracking)[0])
    experiment = client.get_experiment_by_name("handmade")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["dycnn-s0", "static-s0"]
    static = next(r for r in runs if r.info.run_name == "static-s0")
    assert static.data.params["model"] == "static" and static.data.params["ordering"] == "blocked"
    assert static.data.tags["fedll.fingerprint"] == "fp-static"
    history = client.get_metric_history(static.info.run_id, "dice/T2")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(0, 0.1), (1, 0.8), (2, 0.5)]
    assert static.data.metrics["final/forgetting_max/T2"] == pytest.approx(0.3)
    artifacts = {a.path for a in client.list_artifacts(static.info.run_id)}
    assert {"modality_switches.txt", "tables"} <= artifacts
    assert (run_dir / "mlruns" / "mlflow.db").is_file()
    # a resumed run (same trials, same fingerprints) logs nothing new; another setting does
    assert log_trials(run_dir, "handmade", tracking, FINGERPRINTS, summary) == {"mlflow": []}
    changed = {**FINGERPRINTS, "dycnn-s0": "fp-other"}
    assert log_trials(run_dir, "handmade", tracking, changed) == {"mlflow": ["dycnn-s0"]}
    assert len(client.search_runs([experiment.experiment_id])) == 3


@pytest.mark.slow
def test_fedll_run_logs_each_trial_once_across_a_resume(tmp_path: Path, make_scenario, run_fedll):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed (fedll[tracking])")
    pytest.importorskip("mlflow", reason="mlflow-skinny is not installed (fedll[tracking])")
    from mlflow import MlflowClient

    scenario = make_scenario(
        tmp_path / "tiny.yaml", {"tracking": {"tensorboard": True, "mlflow": True}}
    )
    run_dir = tmp_path / "run"
    first = run_fedll("run", scenario, "--out", run_dir, "--local", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "tensorboard: 2 trial(s) logged" in first.stdout
    assert "mlflow: 2 trial(s) logged" in first.stdout
    trials = sorted(p.name for p in (run_dir / "tensorboard").iterdir() if p.is_dir())
    assert len(trials) == 2
    again = run_fedll("run", scenario, "--out", run_dir, "--local", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "2 finished trial(s) were kept" in again.stdout
    assert "tensorboard: 0 trial(s) logged" in again.stdout
    assert "mlflow: 0 trial(s) logged" in again.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir.resolve()}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.info.run_name for r in runs) == trials
    for run in runs:
        assert run.data.params["model"] in {"static", "dycnn"}
        assert len(client.get_metric_history(run.info.run_id, "dice/T2")) == 5  # rounds 0..4
        names = {a.path for a in client.list_artifacts(run.info.run_id, "trial")}
        assert f"trial/{run.info.run_name}.csv" in names
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert any(p.startswith("plots/curves_") for p in plots)
        assert any(p.startswith("plots/attention_") for p in plots) == (
            run.data.params["model"] == "dycnn"
        )
