"""Model pairs in the terminal and on the page: the rows are --compare's, the verdicts follow
the intervals, and a run that cannot compare (two seeds, one model) shows none."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from result_rows import frame, result_row
from typer.testing import CliRunner

from fedll.cli import app
from fedll.report.compare import compare
from fedll.report.pairs import NO_DIFFERENCE, model_pairs, pair_lines, pair_rows

ARRIVING = ["", "t2", "flair"]
CURVE = {"t2": [0.1, 0.8, 0.6], "flair": [0.1, 0.2, 0.7]}


def results(losses: dict[str, float], seeds=range(4), noise: float = 0.02) -> pd.DataFrame:
    """Per model, the curve with ``losses[model]`` more T2 Dice lost in round 2; per case and
    seed independent noise (the same draws for every call)."""
    rng = np.random.default_rng(3)
    rows = []
    for model, loss in losses.items():
        for seed in seeds:
            for t, arrived in enumerate(ARRIVING):
                for modality, curve in CURVE.items():
                    for c in range(4):
                        dice = curve[t] - (loss if modality == "t2" and t == 2 else 0.0)
                        dice += rng.normal(0, noise)
                        rows.append(
                            result_row(model, seed, t, arrived, modality, f"{modality}-{c}", dice)
                        )
    return frame(rows)


def shown(line: str, label: str) -> float:
    """The difference a pair's line shows for ``label``."""
    return float(re.search(rf"{re.escape(label)} ([+-][0-9.]+)±", line).group(1))


def test_the_pairs_rows_are_those_of_compare_for_the_key_measures():
    run = results({"static": 0.0, "dycnn": 0.2})
    pairs = model_pairs(run)
    expected = compare(run, "static")
    expected = expected[expected["measure"].isin(["final_dice", "forgetting_max",
                                                   "learning_accuracy"])]  # fmt: skip
    pd.testing.assert_frame_equal(pairs, expected.reset_index(drop=True))


def test_a_real_difference_is_named_and_noise_is_no_difference_detected():
    run = results({"static": 0.0, "dycnn": 0.2, "grouped": 0.0})
    lines = pair_lines(model_pairs(run))
    by_pair = {line.split(":")[0].strip(): line for line in lines[1:]}
    assert set(by_pair) == {"dycnn - static", "grouped - static", "grouped - dycnn"}
    # 0.2 more T2 forgotten (0.1 averaged over the two modalities), on every seed and case
    assert shown(by_pair["dycnn - static"], "fgt.max") == pytest.approx(0.1, abs=0.01)
    assert shown(by_pair["dycnn - static"], "final") == pytest.approx(-0.1, abs=0.01)
    assert by_pair["dycnn - static"].endswith("differs in final, fgt.max")
    assert by_pair["grouped - static"].endswith(NO_DIFFERENCE)
    assert by_pair["grouped - dycnn"].endswith("differs in final, fgt.max")
    assert all(len(line) <= 120 for line in lines)


def test_the_scenarios_order_names_the_earlier_model():
    run = results({"static": 0.0, "dycnn": 0.2})
    lines = pair_lines(model_pairs(run, order=["dycnn", "static"]))
    assert lines[1].strip().startswith("static - dycnn:")
    assert shown(lines[1], "fgt.max") == pytest.approx(-0.1, abs=0.01)


def test_with_many_models_each_is_paired_with_the_first_only():
    run = results({f"m{i}": 0.0 for i in range(5)}, seeds=range(3))
    pairs = model_pairs(run)
    assert set(zip(pairs["arm"], pairs["baseline"], strict=True)) == {
        ("m1", "m0"), ("m2", "m0"), ("m3", "m0"), ("m4", "m0")
    }  # fmt: skip


@pytest.mark.parametrize(
    "run",
    [results({"static": 0.0, "dycnn": 0.2}, seeds=range(2)), results({"static": 0.0})],
    ids=["two seeds", "one model"],
)
def test_a_run_that_cannot_compare_shows_no_pairs(run):
    pairs = model_pairs(run)
    assert pairs.empty and pair_lines(pairs) == [] and pair_rows(pairs) is None


def test_the_page_table_has_a_row_per_modality_and_both(tmp_path):
    table = pair_rows(model_pairs(results({"static": 0.0, "dycnn": 0.2})))
    assert table["columns"] == [
        "pair", "modality", "final Dice", "forgetting (max)", "learning acc.", "verdict"
    ]  # fmt: skip
    assert [row[1] for row in table["rows"]] == ["T2", "FLAIR", "both (mean)"]
    t2 = table["rows"][0]
    assert t2[0] == "dycnn − static" and t2[3].endswith("]*")
    assert float(t2[3].split()[0]) == pytest.approx(0.2, abs=0.01)
    assert table["rows"][1][-1] == NO_DIFFERENCE


def test_fedll_report_prints_the_pairs_and_writes_them(tmp_path):
    results({"static": 0.0, "dycnn": 0.2}).to_csv(tmp_path / "results.csv", index=False)
    out = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "dycnn - static: final " in out.output
    assert (tmp_path / "tables" / "model_pairs.csv").is_file()
    page = (tmp_path / "report.html").read_text()
    assert 'id="pairs"' in page and "dycnn − static" in page
