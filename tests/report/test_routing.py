"""Per-slice routing separation: reading ``routing.csv``, its table by hand, and the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import make_results  # the hand-built run of test_report

from fedll.errors import DataError
from fedll.report import build_report, read_routing, routing_separation
from fedll.report.completeness import Expected
from fedll.results.columns import REQUIRED_ROUTING_COLUMNS

# decoding accuracy per layer after rounds 0, 1, ...: dycnn seed 1 stops a round early, and
# its dec1 is not decoded in its last round (too few slices)
ACCURACY = {
    ("dycnn", 0): {"enc1": [0.5, 0.6, 0.9], "dec1": [0.5, 0.7, 0.8]},
    ("dycnn", 1): {"enc1": [0.5, 0.7], "dec1": [0.5, np.nan]},
    ("dycnn-grouped", 0): {"enc1": [0.5, 0.9, 1.0], "dec1": [0.5, 1.0, 1.0]},
}
CHANCE = {0: 0.5, 1: 0.6}  # per seed


def make_routing(models: tuple[str, ...] = ("dycnn", "dycnn-grouped")) -> pd.DataFrame:
    """The rows of ``routing.csv`` for :data:`ACCURACY`'s trials of ``models``, in the
    configuration of test_report's hand-built results (trial ids ``<model>-s<seed>``)."""
    rows = []
    for (model, seed), layers in ACCURACY.items():
        if model not in models:
            continue
        for layer, values in layers.items():
            for t, value in enumerate(values):
                rows.append(
                    {"trial": f"{model}-s{seed}", "model": model, "ordering": "blocked",
                     "arrival_batch": 2, "strategy": "fedavg", "seed": seed, "round": t,
                     "layer": layer, "slices": 40, "decoding_accuracy": value,
                     "chance": CHANCE[seed]}
                )  # fmt: skip
    return pd.DataFrame(rows, columns=list(REQUIRED_ROUTING_COLUMNS))


def test_routing_separation_by_hand() -> None:
    table = routing_separation(make_routing())
    keys = ["model", "ordering", "arrival_batch", "strategy", "layer"]
    assert list(table.columns) == [
        *keys, "decoding_accuracy_mean", "decoding_accuracy_min", "decoding_accuracy_max",
        "chance_mean", "n_seeds",
    ]  # fmt: skip
    # configurations and layers in their order of appearance (enc1 before dec1)
    assert list(zip(table["model"], table["layer"], strict=True)) == [
        ("dycnn", "enc1"), ("dycnn", "dec1"), ("dycnn-grouped", "enc1"), ("dycnn-grouped", "dec1")
    ]  # fmt: skip
    values = table.set_index(["model", "layer"]).drop(columns=keys[1:-1])
    # dycnn enc1 at each trial's last round: seed 0 round 2 gives 0.9, seed 1 round 1 gives 0.7
    assert values.loc[("dycnn", "enc1")].tolist() == pytest.approx([0.8, 0.7, 0.9, 0.55, 2])
    # dycnn dec1: seed 1's last round is NaN, skipped; both seeds still counted
    assert values.loc[("dycnn", "dec1")].tolist() == pytest.approx([0.8, 0.8, 0.8, 0.55, 2])
    grouped = values.loc[("dycnn-grouped", "enc1")].tolist()
    assert grouped == pytest.approx([1.0, 1.0, 1.0, 0.5, 1])


def test_read_routing_types_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "routing.csv"
    make_routing().to_csv(path, index=False)
    routing = read_routing(path)
    assert all(routing[c].dtype == np.int64 for c in ("round", "seed", "arrival_batch", "slices"))
    assert routing["decoding_accuracy"].dtype == np.float64
    assert routing["decoding_accuracy"].isna().sum() == 1  # a NaN layer is allowed
    pd.testing.assert_frame_equal(routing, make_routing(), check_dtype=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.drop(columns=["chance"]), "missing columns chance"),
        (lambda r: r.assign(decoding_accuracy=1.5), "decoding_accuracy has values outside"),
        (lambda r: r.assign(chance=-0.1), "chance has values outside"),
        (lambda r: r.assign(decoding_accuracy="high"), "needs numbers, got 'high'"),
        (lambda r: r.assign(slices="many"), "slices needs integers"),
    ],
)
def test_bad_routing_file(tmp_path: Path, change, message: str) -> None:
    path = tmp_path / "routing.csv"
    change(make_routing()).to_csv(path, index=False)
    with pytest.raises(DataError, match=message) as info:
        read_routing(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_build_report_reads_routing(tmp_path: Path, suffix: str) -> None:
    make_results().to_csv(tmp_path / "results.csv", index=False)
    make_routing(("dycnn",)).to_csv(tmp_path / f"routing{suffix}", index=False)
    report = build_report(tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "routing_separation.csv")
    assert tmp_path / "tables" / "routing_separation.csv" in report.tables
    assert list(table["layer"]) == ["enc1", "dec1"]
    assert table["decoding_accuracy_mean"].tolist() == pytest.approx([0.8, 0.8])
    plot = tmp_path / "plots" / "routing_blocked_2_fedavg.png"
    assert plot in report.plots and plot.stat().st_size > 10_000
    assert "Per-slice routing of the Dy-CNNs" in report.html.read_text()


def test_a_partial_report_keeps_the_routing_of_complete_configurations(tmp_path: Path) -> None:
    results = make_results()
    # dycnn seed 1 lacks its round 2: the dycnn configuration, and its routing, are left out
    results = results[(results["trial"] != "dycnn-s1") | (results["round"] < 2)]
    results.to_csv(tmp_path / "results.csv", index=False)
    make_routing(("dycnn",)).to_csv(tmp_path / "routing.csv", index=False)
    trials = ["static-s0", "static-s1", "dycnn-s0", "dycnn-s1"]
    report = build_report(tmp_path, Expected(rounds=dict.fromkeys(trials, 2)), partial=True)
    assert report.left_out == ["dycnn-s0", "dycnn-s1"]
    assert pd.read_csv(tmp_path / "tables" / "routing_separation.csv").empty
    assert not any(p.name.startswith("routing_") for p in report.plots)
