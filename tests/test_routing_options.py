"""The routing study's model options end to end: ``fedll run`` of the tiny scenario with
modality-routed Dy-CNNs (soft, hard with its routing frozen, hard with a normalisation layer
per modality) and ACPs that read richer statistics, then ``fedll segment`` of a kept
modality-routed model."""

from __future__ import annotations

import pandas as pd
import pytest
from test_cli import assert_one_line_error, invoke

from fedll.data.prepare import PreparedCohort
from fedll.results.columns import config_columns
from fedll.run.store import TrialFiles

pytestmark = pytest.mark.slow

MODELS = {
    "static": None,
    "dycnn": None,
    "soft": {"name": "dycnn", "base_width": 4, "depth": 2, "routing": "modality-soft"},
    "hard": {
        "name": "dycnn",
        "base_width": 4,
        "depth": 2,
        "routing": "modality-hard",
        "freeze_routing_after": 1,
    },
    "hard-norm": {
        "name": "dycnn",
        "base_width": 4,
        "depth": 2,
        "routing": "modality-hard",
        "norm_by_modality": True,
    },
    "stats-max": {
        "name": "dycnn",
        "base_width": 4,
        "depth": 2,
        "acp_stats": ["mean", "std", "max"],
    },
    "stats-quantiles": {
        "name": "dycnn-grouped",
        "base_width": 4,
        "depth": 2,
        "acp_stats": ["mean", "std", "max", "quantiles"],
    },
}


@pytest.fixture(scope="module")
def routed_run(tmp_path_factory, make_scenario):
    root = tmp_path_factory.mktemp("routing")
    path = make_scenario(root / "s.yaml", {"models": MODELS, "joint": True})
    run_dir = root / "run"
    result = invoke("run", path, "--out", run_dir, "--local")
    assert result.exit_code == 0, (result.output, result.exception)
    return run_dir


def test_every_routing_option_runs_and_is_evaluated(routed_run):
    results = pd.read_csv(routed_run / "results.csv")
    attention = pd.read_csv(routed_run / "attention.csv")
    assert set(results["model"]) == {"soft", "hard", "hard-norm", "stats-max", "stats-quantiles"}
    assert results["dice"].notna().all()
    assert set(attention["model"]) == {"soft", "hard", "hard-norm", "stats-max", "stats-quantiles"}
    # hard routing: T2 slices use kernels 0-1, FLAIR slices kernels 2-3, in every layer
    hard = attention[attention["model"] == "hard"]
    share = hard.groupby(["modality", "kernel"])["mass"].agg(["min", "max"])
    assert (share.loc[("t2", 0)] == 0.5).all() and (share.loc[("t2", 2)] == 0.0).all()
    assert (share.loc[("flair", 3)] == 0.5).all() and (share.loc[("flair", 1)] == 0.0).all()
    # soft routing starts uniform (zero logits) and its attention sums to 1 per layer
    soft = attention[(attention["model"] == "soft") & (attention["round"] == 0)]
    assert soft["mass"].round(6).eq(0.25).all()


def test_segment_needs_the_modality_of_a_modality_routed_model(routed_run, tmp_path):
    test = PreparedCohort.read(routed_run / "cohort.json").test
    record = test["flair"][0]
    trials = pd.read_csv(routed_run / "results.csv")
    trial = trials.loc[(trials["model"] == "soft") & (trials["ordering"] != "joint"), "trial"]
    kept = TrialFiles.of(routed_run, str(trial.iloc[0])).model
    out = tmp_path / "mask.nii.gz"
    assert_one_line_error(invoke("segment", kept, record.image, "--out", out), "--modality")
    assert not out.exists()
    result = invoke("segment", kept, record.image, "--out", out, "--modality", "flair")
    assert result.exit_code == 0, (result.output, result.exception)
    assert out.exists()


def test_per_slice_routing_separation_is_recorded(routed_run):
    routing = pd.read_csv(routed_run / "routing.csv")
    assert set(routing["model"]) == {"soft", "hard", "hard-norm", "stats-max", "stats-quantiles"}
    assert routing["decoding_accuracy"].between(0, 1).all()
    # hard routing gives T2 and FLAIR slices disjoint kernels: every layer decodes perfectly
    assert (routing.loc[routing["model"] == "hard", "decoding_accuracy"] == 1.0).all()
    assert (routing.loc[routing["model"] == "hard-norm", "decoding_accuracy"] == 1.0).all()
    # soft routing starts with equal logits: every slice routes alike, decoded at chance
    start = routing[(routing["model"] == "soft") & (routing["round"] == 0)]
    assert (start["decoding_accuracy"] <= start["chance"]).all()
    results = pd.read_csv(routed_run / "results.csv")
    assert set(routing["trial"]) == set(results["trial"])
    # the report reads it: a row per configuration and layer, a plot per panel
    table = pd.read_csv(routed_run / "tables" / "routing_separation.csv")
    keys = config_columns(routing)
    assert len(table) == len(routing.drop_duplicates([*keys, "layer"]))
    assert (table.loc[table["model"] == "hard", "decoding_accuracy_mean"] == 1.0).all()
    panels = routing.drop_duplicates([k for k in keys if k != "model"])
    assert len(list((routed_run / "plots").glob("routing_*.png"))) == len(panels)
