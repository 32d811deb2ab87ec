"""Forgetting table, plots and `fedll report` on a results table small enough to check by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedll.errors import DataError, FedllError
from fedll.evaluation.metrics import HD95_MAX_MM
from fedll.report import (
    attention_distance,
    build_report,
    check_results,
    dice_matrix,
    forgetting_table,
    format_table,
    to_latex,
    to_markdown,
    trial_matrices,
    trial_summary,
    write_tables,
)
from fedll.results.columns import REQUIRED_RESULT_COLUMNS as RESULT_COLUMNS

# Dice matrices (rows: rounds 0..2, columns: t2, flair); round 1 trains t2, round 2 flair
MATRICES = {
    ("static", 0): [[0.1, 0.2], [0.8, 0.3], [0.5, 0.7]],
    ("static", 1): [[0.1, 0.0], [0.6, 0.1], [0.2, 0.9]],
    ("dycnn", 0): [[0.0, 0.0], [0.7, 0.2], [0.7, 0.6]],
    ("dycnn", 1): [[0.0, 0.0], [0.9, 0.2], [0.5, 0.8]],
}
ARRIVING = ["", "t2", "flair"]
SITES = ["", "site_a", "site_b"]


def make_results(matrices: dict = MATRICES, arriving: list[str] = ARRIVING) -> pd.DataFrame:
    """2 models x 1 ordering x 1 batch x 2 seeds x 3 rounds x 2 modalities x 2 cases; the two
    cases of an entry are r - d and r + d, so their mean is exactly the matrix entry r."""
    rows = []
    for (model, seed), R in matrices.items():
        for t, row in enumerate(R):
            for modality, r in zip(("t2", "flair"), row, strict=True):
                d = min(r, 1 - r, 0.1)
                for case, value in (("p1", r - d), ("p2", r + d)):
                    rows.append(
                        {
                            "trial": f"{model}-s{seed}",
                            "model": model,
                            "ordering": "blocked",
                            "arrival_batch": 2,
                            "strategy": "fedavg",
                            "seed": seed,
                            "round": t,
                            "sites": SITES[t],
                            "arriving": arriving[t],
                            "modality": modality,
                            "case": f"{modality}-{case}",
                            "dice": value,
                        }
                    )
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def entry(table: pd.DataFrame, model: str, modality: str, column: str) -> float:
    row = table[(table["model"] == model) & (table["modality"] == modality)]
    assert len(row) == 1
    return float(row[column].iloc[0])


def test_dice_matrix_is_the_mean_over_cases() -> None:
    matrices = trial_matrices(make_results())
    assert list(matrices) == ["static-s0", "static-s1", "dycnn-s0", "dycnn-s1"]
    R, arriving = matrices["static-s1"]
    np.testing.assert_allclose(R, MATRICES[("static", 1)])
    assert arriving == [frozenset(), frozenset({0}), frozenset({1})]


def test_trial_summary_by_hand() -> None:
    summary = trial_summary(make_results())
    assert len(summary) == 8
    row = summary[(summary["trial"] == "static-s1") & (summary["modality"] == "t2")].iloc[0]
    # static seed 1, t2: 0.1 -> 0.6 (trained) -> 0.2 (flair trained)
    assert row["final_dice"] == pytest.approx(0.2)
    assert row["forgetting_final"] == pytest.approx(0.4)  # max 0.6 - 0.2
    assert row["switch_drop_mean"] == pytest.approx(0.4)
    assert row["bwt"] == pytest.approx(-0.4)  # 0.2 - 0.6
    assert row["learning_accuracy"] == pytest.approx(0.6)
    assert row["auc"] == pytest.approx(0.4)  # (0.6 + 0.2) / 2
    assert row["mean_final_dice"] == pytest.approx(0.55)  # (0.2 + 0.9) / 2
    flair = summary[(summary["trial"] == "static-s1") & (summary["modality"] == "flair")].iloc[0]
    assert np.isnan(flair["switch_drop_mean"])  # flair never stops arriving
    assert np.isnan(flair["bwt"])  # trained in the final round


def test_forgetting_table_by_hand() -> None:
    table = forgetting_table(make_results())
    assert list(table["model"]) == ["dycnn", "dycnn", "static", "static"]
    assert list(table["modality"]) == ["t2", "flair", "t2", "flair"]
    assert set(table["n_seeds"]) == {2}
    s2 = np.sqrt(2)
    # static t2: seeds give final 0.5 / 0.2, forgetting 0.3 / 0.4, drops 0.3 / 0.4,
    # BWT -0.3 / -0.4, learning accuracy 0.8 / 0.6, AUC 0.65 / 0.4 (std of two = |a - b| / sqrt 2)
    expected = {
        "final_dice": (0.35, 0.3 / s2),
        "forgetting_final": (0.35, 0.1 / s2),
        "forgetting_max": (0.35, 0.1 / s2),
        "switch_drop_mean": (0.35, 0.1 / s2),
        "switch_drop_max": (0.35, 0.1 / s2),
        "bwt": (-0.35, 0.1 / s2),
        "learning_accuracy": (0.7, 0.2 / s2),
        "auc": (0.525, 0.25 / s2),
        "mean_final_dice": (0.575, 0.05 / s2),  # (0.5 + 0.7) / 2 and (0.2 + 0.9) / 2
    }
    for measure, (mean, std) in expected.items():
        assert entry(table, "static", "t2", f"{measure}_mean") == pytest.approx(mean), measure
        assert entry(table, "static", "t2", f"{measure}_std") == pytest.approx(std), measure
    # dycnn t2: final 0.7 / 0.5, forgetting 0 / 0.4 -> 0.2 ± 0.4 / sqrt 2, AUC 0.7 / 0.7
    assert entry(table, "dycnn", "t2", "forgetting_final_mean") == pytest.approx(0.2)
    assert entry(table, "dycnn", "t2", "forgetting_final_std") == pytest.approx(0.4 / s2)
    assert entry(table, "dycnn", "t2", "auc_std") == pytest.approx(0.0)
    # dycnn flair: final 0.6 / 0.8, AUC (0.2 + 0.6) / 2 and (0.2 + 0.8) / 2; never switched away
    assert entry(table, "dycnn", "flair", "final_dice_mean") == pytest.approx(0.7)
    assert entry(table, "dycnn", "flair", "auc_mean") == pytest.approx(0.45)
    assert np.isnan(entry(table, "dycnn", "flair", "switch_drop_mean_mean"))

    view = format_table(table)
    static_t2 = view[(view["model"] == "static") & (view["modality"] == "T2")].iloc[0]
    # the mean and its 95 % interval over 2 seeds: mean ± t(0.975, 1) std / sqrt 2, with
    # t(0.975, 1) = 12.706: final 0.35 ± 12.706 x 0.15 = 0.35 ± 1.906
    assert static_t2["final Dice"] == "0.350 [-1.556, 2.256]"
    assert static_t2["BWT"] == "-0.350 [-0.985, 0.285]"  # -0.35 ± 12.706 x 0.05
    assert view[view["modality"] == "FLAIR"]["BWT"].eq("n/a").all()


def test_arriving_order_does_not_matter() -> None:
    results = make_results()
    both = results["round"] == 2
    results.loc[both, "arriving"] = np.where(results.loc[both, "case"].str.endswith("1"),
                                             "flair;t2", " t2 ; flair ")  # fmt: skip
    R, arriving = trial_matrices(results)["static-s0"]
    assert arriving[2] == frozenset({0, 1})


def test_extra_config_column_splits_configurations() -> None:
    results = make_results()
    results["cl"] = np.where(results["seed"] == 0, "none", "ewc")
    table = forgetting_table(results)
    assert "cl" in table.columns
    assert len(table) == 8 and set(table["n_seeds"]) == {1}
    assert np.isnan(table["final_dice_std"]).all()  # one seed: no spread
    assert "0.500" in set(format_table(table)["final Dice"])  # no "± nan"


def test_markdown_and_latex_formatters() -> None:
    view = pd.DataFrame({"model": ["dy_cnn|x"], "Dice": ["0.5 ± 0.1"]})
    assert to_markdown(view) == "| model | Dice |\n|---|---|\n| dy_cnn\\|x | 0.5 ± 0.1 |\n"
    latex = to_latex(view)
    assert r"dy\_cnn|x & 0.5 $\pm$ 0.1 \\" in latex
    assert latex.startswith(r"\begin{tabular}{ll}") and r"\bottomrule" in latex


def test_write_tables(tmp_path: Path) -> None:
    paths = write_tables(forgetting_table(make_results()), tmp_path / "tables")
    assert [p.name for p in paths] == ["forgetting.csv", "forgetting.md", "forgetting.tex"]
    back = pd.read_csv(paths[0])
    assert back["final_dice_mean"].notna().all() and len(back) == 4
    row = "| static | blocked | 2 | fedavg | T2 | 2 | 0.350 [-1.556, 2.256] |"
    assert row in paths[1].read_text()
    assert r"0.350 [-1.556, 2.256]" in paths[2].read_text()


def make_attention() -> pd.DataFrame:
    """dycnn only; layer enc1 routes T2 to kernels 0-1 and FLAIR to 1-2, enc2 identically."""
    masses = {
        ("t2", "enc1"): [2, 2, 0, 0],  # normalised 0.5 0.5 0 0
        ("flair", "enc1"): [0, 1, 1, 0],  # 0 0.5 0.5 0 -> TV 0.5 * (0.5 + 0.5) = 0.5
        ("t2", "enc2"): [0.25] * 4,
        ("flair", "enc2"): [0.25] * 4,  # TV 0
    }
    rows = []
    for seed in (0, 1):
        for t in range(3):
            for (modality, layer), mass in masses.items():
                for kernel, value in enumerate(mass):
                    rows.append(
                        {"trial": f"dycnn-s{seed}", "model": "dycnn", "ordering": "blocked",
                         "arrival_batch": 2, "strategy": "fedavg", "seed": seed, "round": t,
                         "modality": modality, "layer": layer, "kernel": kernel, "mass": value}
                    )  # fmt: skip
    return pd.DataFrame(rows)


def test_attention_distance_by_hand() -> None:
    tv = attention_distance(make_attention())
    assert len(tv) == 2 * 3 * 2
    np.testing.assert_allclose(tv[tv["layer"] == "enc1"]["tv"], 0.5)
    np.testing.assert_allclose(tv[tv["layer"] == "enc2"]["tv"], 0.0)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_build_report_round_trip(tmp_path: Path, suffix: str) -> None:
    make_results().to_csv(tmp_path / f"results{suffix}", index=False)
    make_attention().to_csv(tmp_path / f"attention{suffix}", index=False)
    report = build_report(tmp_path)
    expected = forgetting_table(make_results())
    pd.testing.assert_frame_equal(report.table, expected)
    assert {p.name for p in report.tables} == {
        "forgetting.csv", "forgetting.md", "forgetting.tex", "trials.csv", "attention_tv.csv"
    }  # fmt: skip
    assert all(p.exists() and p.stat().st_size > 0 for p in report.tables + report.plots)
    assert len(report.plots) == 3
    assert report.markdown == tmp_path / "tables" / "forgetting.md"


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path.parent


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "results.csv: file not found"),
        ("", "empty file"),
        (",".join(RESULT_COLUMNS) + "\n", "no result rows"),
        ("trial,model,round\n1,static,0\n", "missing columns ordering, arrival_batch, strategy"),
        (",".join(RESULT_COLUMNS) + '\n"unclosed,1\n', "not a readable CSV"),
    ],
)
def test_bad_results_file(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "results.csv").write_text(content)
    with pytest.raises(DataError, match=message) as info:
        build_report(tmp_path)
    assert str(tmp_path / "results.csv") in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.assign(dice="high"), "column dice needs numbers, got 'high'"),
        (lambda r: r.assign(dice=1.5), "outside"),
        (lambda r: r.assign(round="first"), "column round needs integers"),
        (lambda r: r.assign(modality="t1"), "unknown modality 't1'"),
        (lambda r: r.assign(arriving="t2;pd"), "arriving has unknown modality 'pd'"),
        (lambda r: r.assign(case="p1"), "has case 'p1'"),
        (lambda r: r.assign(model=np.arange(len(r)) % 2), "has several values of model"),
        (lambda r: r.assign(arriving=r["arriving"].where(r["case"] != "t2-p2", "")), "arriving"),
        (lambda r: r.assign(arriving="t2"), "round 0"),
        (lambda r: r.assign(round=r["round"] - 1), "negative"),
    ],
)
def test_malformed_results(tmp_path: Path, change, message: str) -> None:
    change(make_results()).to_csv(tmp_path / "results.csv", index=False)
    with pytest.raises(FedllError, match=message) as info:
        build_report(tmp_path)
    assert "results.csv" in str(info.value)


def at(row: int, column: str, value):
    """A change of ``make_results()`` that sets data row ``row`` (from 1) of ``column``."""

    def change(results: pd.DataFrame) -> pd.DataFrame:
        results = results.astype({column: object}) if column in results else results
        results.loc[row - 1, column] = value
        return results

    return change


def scored(results: pd.DataFrame) -> pd.DataFrame:
    """Every case with an HD95, a surface Dice and its tolerance, as today's fedll writes."""
    return results.assign(hd95=4.0, surface_dice=0.5, surface_tolerance_mm=2.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (at(3, "dice", np.nan), "column dice is empty in row 3 (every test case has a Dice)"),
        (at(3, "dice", ""), "column dice is empty in row 3"),
        (at(5, "dice", "inf"), "column dice needs finite numbers, got 'inf' (row 5)"),
        (at(4, "hd95", "inf"), "column hd95 needs finite numbers, got 'inf' (row 4)"),
        (at(4, "hd95", "-inf"), "column hd95 needs finite numbers, got '-inf' (row 4)"),
        (at(4, "hd95", "1e400"), "column hd95 needs finite numbers, got '1e400' (row 4)"),
        (at(2, "hd95", np.nan), "column hd95 is empty in row 2 (a trial has it on every row"),
        (at(6, "surface_dice", ""), "column surface_dice is empty in row 6"),
        (at(6, "personal_dice", "inf"), "column personal_dice needs finite numbers"),
        (at(7, "epsilon", -1.0), "column epsilon has negative values"),
        (at(7, "dp_delta", 2.0), "column dp_delta has values outside"),
        (at(2, "seed", "inf"), "column seed needs integers, got 'inf' (row 2)"),
        (at(2, "seed", "1e300"), "column seed needs integers, got '1e300' (row 2)"),
        (at(9, "round", "nan"), "column round needs integers, got 'nan' (row 9)"),
    ],
)
def test_a_value_the_schema_has_none_of_names_its_column_and_row(
    tmp_path: Path, change, message: str
) -> None:
    """Results with no seals beside them (a study's results.csv): a NaN or infinite value
    where fedll never writes one is refused, by column and data row, not reported."""
    change(scored(make_results())).to_csv(tmp_path / "results.csv", index=False)
    with pytest.raises(DataError) as info:
        build_report(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'results.csv'}: ")
    assert message in str(info.value), str(info.value)
    assert not (tmp_path / "tables").exists()


def test_the_columns_that_may_be_empty_stay_readable(tmp_path: Path) -> None:
    """Dice-only trials (an earlier fedll) beside scored ones, privacy and personalised
    columns empty: the report reads them; the HD95 table is of the scored trials."""
    results = scored(make_results())
    dice_only = results["trial"].str.startswith("static")
    results.loc[dice_only, ["hd95", "surface_dice", "surface_tolerance_mm"]] = np.nan
    results["epsilon"] = np.nan
    results["personal_dice"] = np.where(results["round"] == 0, np.nan, 0.5)
    results.to_csv(tmp_path / "results.csv", index=False)
    built = build_report(tmp_path)
    hd95 = pd.read_csv(tmp_path / "tables" / "trials_hd95.csv")
    assert set(hd95.dropna(subset=["final_hd95"])["trial"]) == {"dycnn-s0", "dycnn-s1"}
    assert len(built.summary) == 8


def test_an_attention_mass_must_be_a_finite_number(tmp_path: Path) -> None:
    make_results().to_csv(tmp_path / "results.csv", index=False)
    base = {"trial": "static-s0", "model": "static", "ordering": "blocked",
            "arrival_batch": 2, "strategy": "fedavg", "seed": 0, "round": 1, "modality": "t2",
            "layer": "enc1"}  # fmt: skip
    for mass, message in (("", "column mass is empty in row 2"), ("inf", "needs finite")):
        rows = [{**base, "kernel": 0, "mass": 1.0}, {**base, "kernel": 1, "mass": mass}]
        pd.DataFrame(rows).to_csv(tmp_path / "attention.csv", index=False)
        with pytest.raises(DataError, match=message) as info:
            build_report(tmp_path)
        assert str(tmp_path / "attention.csv") in str(info.value)


def test_measure_missing_for_some_seeds_is_marked() -> None:
    results = make_results()
    # static seed 1 trains t2 twice: no switch, so only seed 0 has a t2 switch drop (0.3)
    results.loc[(results["trial"] == "static-s1") & (results["round"] == 2), "arriving"] = "t2"
    table = forgetting_table(results)
    assert entry(table, "static", "t2", "switch_drop_mean_n") == 1
    assert entry(table, "static", "t2", "final_dice_n") == 2
    view = format_table(table)
    row = view[(view["model"] == "static") & (view["modality"] == "T2")].iloc[0]
    assert row["switch drop (mean)"] == "0.300 (n=1)"


def test_dice_matrix_skips_nan_cases_and_fills_missing_rows() -> None:
    """The matrix of checked rows (a results file may hold no NaN Dice: check_results
    refuses it; a metric's matrix may meet one)."""
    results = check_results(make_results())
    results = results[results["trial"] == "static-s0"].copy()
    # an unscored case (NaN) is skipped: t2 round 1 keeps only p2 = 0.8 + 0.1
    results.loc[(results["round"] == 1) & (results["case"] == "t2-p1"), "dice"] = np.nan
    # flair not evaluated after round 2
    results = results[~((results["round"] == 2) & (results["modality"] == "flair"))]
    R, arriving = dice_matrix(results)
    np.testing.assert_allclose(R[:, 0], [0.1, 0.9, 0.5])
    np.testing.assert_allclose(R[:2, 1], [0.2, 0.3])
    assert np.isnan(R[2, 1])
    assert arriving[2] == frozenset({1})


def test_failed_sites_and_rejected_updates_are_counted_per_configuration() -> None:
    results = make_results()
    # static seed 0: round 1 site_a failed; round 2 two rejected; dycnn seed 1: one failure
    failed = {("static-s0", 1): "site_a", ("dycnn-s1", 2): "site_b"}
    rejected = {("static-s0", 2): "site_a;site_b"}
    keys = list(zip(results["trial"], results["round"], strict=True))
    results["failed"] = [failed.get(k, "") for k in keys]
    results["rejected"] = [rejected.get(k, "") for k in keys]

    summary = trial_summary(results).set_index(["trial", "modality"])
    assert summary.loc[("static-s0", "t2"), "failed_updates"] == 1
    assert summary.loc[("static-s0", "flair"), "rejected_updates"] == 2
    assert summary.loc[("static-s1", "t2"), "failed_updates"] == 0
    table = forgetting_table(results)
    assert entry(table, "static", "t2", "failed_updates") == 1  # summed over seeds
    assert entry(table, "static", "t2", "rejected_updates") == 2
    assert entry(table, "dycnn", "flair", "failed_updates") == 1
    view = format_table(table)
    assert list(view.columns[-2:]) == ["failed updates", "rejected updates"]
    assert view.loc[view["model"] == "static", "rejected updates"].tolist() == ["2", "2"]
    # results without the columns (older runs) have no counts
    assert "failed_updates" not in forgetting_table(make_results()).columns


def test_hd95_measures_are_rises_by_hand(tmp_path: Path) -> None:
    # one trial; HD95 (mm) per round (0..2) and modality, round 1 trains t2, round 2 flair
    hd95 = {"t2": [20.0, 5.0, 12.0], "flair": [30.0, 25.0, 4.0]}
    results = make_results({("static", 0): MATRICES[("static", 0)]})
    pairs = zip(results["round"], results["modality"], strict=True)
    results["hd95"] = [hd95[m][t] for t, m in pairs]
    results["surface_dice"] = results["dice"]
    results["evaluated_slices"] = "all"
    results["surface_tolerance_mm"] = 2.0
    summary = trial_summary(results, "hd95")
    t2 = summary[summary["modality"] == "t2"].iloc[0]
    flair = summary[summary["modality"] == "flair"].iloc[0]
    # t2: best (lowest) 5 mm after round 1, 12 mm at the end -> a 7 mm rise, at the switch too
    assert (t2["final_hd95"], t2["forgetting_final"], t2["forgetting_max"]) == (12.0, 7.0, 7.0)
    assert (t2["switch_drop_mean"], t2["switch_drop_max"]) == (7.0, 7.0)
    assert t2["bwt"] == -7.0  # worse since t2 last trained
    assert (t2["learning_accuracy"], t2["auc"], t2["mean_final_hd95"]) == (5.0, 8.5, 8.0)
    assert (flair["forgetting_max"], flair["final_hd95"]) == (0.0, 4.0)  # only fell
    assert np.isnan(flair["bwt"]) and np.isnan(flair["switch_drop_mean"])
    results.to_csv(tmp_path / "results.csv", index=False)
    report = build_report(tmp_path)
    names = {p.name for p in report.tables}
    assert {"forgetting_hd95.md", "forgetting_surface_dice.csv", "trials_hd95.csv"} <= names
    markdown = (tmp_path / "tables" / "forgetting_hd95.md").read_text()
    assert markdown.startswith("HD95 (mm) per test case") and "all brain slices" in markdown
    assert "| final HD95 (mm) |" in markdown
    assert "tolerance 2 mm" in (tmp_path / "tables" / "forgetting_surface_dice.md").read_text()


def with_missed_cases() -> pd.DataFrame:
    """One trial (rounds 0..2; round 1 trains t2, round 2 flair) whose per-case HD95 has the
    373.13 mm of an empty prediction (S): t2 [S, S], [4, S], [6, 10]; flair [S, 20],
    [10, 30], [S, S] (cases p1, p2 per round)."""
    S = HD95_MAX_MM
    hd95 = {
        "t2": [(S, S), (4.0, S), (6.0, 10.0)],
        "flair": [(S, 20.0), (10.0, 30.0), (S, S)],
    }
    results = make_results({("static", 0): MATRICES[("static", 0)]})
    keys = zip(results["round"], results["modality"], results["case"], strict=True)
    results["hd95"] = [hd95[m][t][case.endswith("p2")] for t, m, case in keys]
    results["surface_dice"] = results["dice"]
    results["evaluated_slices"] = "all"
    results["surface_tolerance_mm"] = 2.0
    return results


def test_hd95_is_over_the_detected_cases_beside_the_detection_rate(tmp_path: Path) -> None:
    results = with_missed_cases()
    R, _ = dice_matrix(check_results(results), metric="hd95")
    # t2: none detected, 4, (6 + 10) / 2; flair: 20, (10 + 30) / 2, none detected
    np.testing.assert_array_equal(R, [[np.nan, 20.0], [4.0, 20.0], [8.0, np.nan]])
    rate, _ = dice_matrix(check_results(results), metric="detection_rate")
    np.testing.assert_array_equal(rate, [[0.0, 0.5], [0.5, 1.0], [1.0, 0.0]])

    summary = trial_summary(results, "hd95").set_index("modality")
    # t2: best 4 mm after round 1, 8 mm at the end; flair: no detected case at the end
    assert (summary.loc["t2", "final_hd95"], summary.loc["t2", "forgetting_final"]) == (8.0, 4.0)
    assert (summary.loc["t2", "learning_accuracy"], summary.loc["t2", "auc"]) == (4.0, 6.0)
    assert np.isnan(summary.loc["flair", "final_hd95"])
    assert np.isnan(summary.loc["flair", "learning_accuracy"])  # round 2 detected nothing
    assert summary.loc["flair", "mean_final_hd95"] == 8.0  # the modalities with a value

    detection = trial_summary(results, "detection_rate").set_index("modality")
    assert detection.loc["t2", "final_detection_rate"] == 1.0
    assert detection.loc["flair", "final_detection_rate"] == 0.0
    assert detection.loc["flair", "forgetting_max"] == 1.0  # all detected after round 1
    assert (detection.loc["t2", "auc"], detection.loc["flair", "auc"]) == (0.75, 0.5)
    assert detection.loc["t2", "mean_final_detection_rate"] == 0.5

    view = format_table(forgetting_table(results, "hd95"), metric="hd95").set_index("modality")
    assert view.loc["FLAIR", "final HD95 (mm)"] == "n/a"
    assert view.loc["T2", "final HD95 (mm)"] == "8.000"

    results.to_csv(tmp_path / "results.csv", index=False)
    report = build_report(tmp_path)
    names = {p.name for p in report.tables}
    assert {
        "forgetting_hd95.md", "forgetting_detection_rate.md", "forgetting_hd95_brats.md",
        "trials_hd95.csv", "trials_detection_rate.csv", "trials_hd95_brats.csv",
    } <= names  # fmt: skip
    tables = tmp_path / "tables"
    caption = (tables / "forgetting_hd95.md").read_text().splitlines()[0]
    assert "with a non-empty prediction" in caption and "n/a: none detected" in caption
    assert "| final detection rate |" in (tables / "forgetting_detection_rate.md").read_text()
    written = pd.read_csv(tables / "trials_hd95.csv").set_index("modality")
    assert written.loc["t2", "final_hd95"] == 8.0 and np.isnan(written.loc["flair", "final_hd95"])
    # the page shows HD95 beside the detection rate
    html = report.html.read_text()
    detection_part = html.split('<h2 id="detection">')[1].split("<h2")[0]
    assert "final detection rate" in detection_part and "detection rate (mean over rounds)" in (
        detection_part
    )
    assert "<td>8.000</td>" in detection_part and "<td>0.750</td>" in detection_part
    assert (
        'n/a: no test case of this modality had a non-empty prediction">n/a</td>' in detection_part
    )  # flair's final HD95, and why


def test_the_brats_convention_counts_a_missed_case_at_the_sentinel() -> None:
    results = with_missed_cases()
    S = HD95_MAX_MM
    # the plain mean of the written column, as the report computed HD95 before
    brats = trial_summary(results, "hd95_brats").set_index("modality")
    assert brats.loc["t2", "final_hd95_brats"] == 8.0
    assert brats.loc["flair", "final_hd95_brats"] == S
    # t2 fell from S to (4 + S) / 2 and 8; flair rose from 20 (round 1) to S
    assert brats.loc["t2", "auc"] == pytest.approx(((4.0 + S) / 2 + 8.0) / 2)
    assert brats.loc["flair", "forgetting_final"] == pytest.approx(S - 20.0)
    assert brats.loc["flair", "learning_accuracy"] == S
    R, _ = dice_matrix(check_results(results), metric="hd95_brats")
    np.testing.assert_allclose(R, [[S, (S + 20.0) / 2], [(4.0 + S) / 2, 20.0], [8.0, S]])
    markdown = format_table(forgetting_table(results, "hd95_brats"), metric="hd95_brats")
    assert "final BraTS HD95 (mm)" in markdown.columns


def test_the_final_epsilon_is_a_column_only_where_some_trial_has_one(tmp_path: Path) -> None:
    results = make_results()
    # static: an accountant whose ε after rounds 0, 1, 2 is 0, 1.5, 2.25 (δ 1e-5); dycnn: none
    spent = {0: 0.0, 1: 1.5, 2: 2.25}
    static = results["model"] == "static"
    results["epsilon"] = np.where(static, results["round"].map(spent), np.nan)
    results["dp_delta"] = np.where(static, 1e-5, np.nan)
    summary = trial_summary(results).set_index(["trial", "modality"])
    assert summary.loc[("static-s1", "flair"), "final_epsilon"] == 2.25
    assert np.isnan(summary.loc[("dycnn-s0", "t2"), "final_epsilon"])
    table = forgetting_table(results)
    assert entry(table, "static", "t2", "final_epsilon") == 2.25
    view = format_table(table)
    assert view.columns[-1] == "final ε"
    assert view.loc[view["model"] == "static", "final ε"].tolist() == ["2.25", "2.25"]
    assert view.loc[view["model"] == "dycnn", "final ε"].tolist() == ["n/a", "n/a"]
    results.to_csv(tmp_path / "results.csv", index=False)
    markdown = build_report(tmp_path).markdown.read_text()
    assert "δ = 1e-05" in markdown.splitlines()[0] and "| final ε |" in markdown
    # without an accountant (or results of an earlier fedll): no column, the caption as before
    assert "final_epsilon" not in trial_summary(make_results()).columns
    assert "final ε" not in format_table(forgetting_table(make_results())).columns


def test_personal_measures_appear_only_with_personalised_models(tmp_path: Path) -> None:
    plain = make_results()
    before = format_table(forgetting_table(plain))
    assert "final personal Dice" not in before.columns
    results = plain.copy()
    results["personal_dice"] = np.nan
    # static seed 0: t2's personalised Dice 0.9 after round 1, 0.6 after round 2; flair's 0.8
    personal = {(1, "t2"): 0.9, (2, "t2"): 0.6, (2, "flair"): 0.8}
    for (t, modality), value in personal.items():
        rows = (results["trial"] == "static-s0") & (results["round"] == t)
        results.loc[rows & (results["modality"] == modality), "personal_dice"] = value
    pd.testing.assert_frame_equal(format_table(forgetting_table(results.assign(
        personal_dice=np.nan))), before)  # fmt: skip
    summary = trial_summary(results)
    row = summary[(summary["trial"] == "static-s0") & (summary["modality"] == "t2")].iloc[0]
    assert row["final_personal_dice"] == pytest.approx(0.6)
    assert row["personal_forgetting_max"] == pytest.approx(0.3)  # 0.9 - 0.6
    flair = summary[(summary["trial"] == "static-s0") & (summary["modality"] == "flair")]
    assert flair["final_personal_dice"].iloc[0] == pytest.approx(0.8)
    assert summary.loc[summary["trial"] != "static-s0", "final_personal_dice"].isna().all()
    table = forgetting_table(results)
    assert entry(table, "static", "t2", "final_personal_dice_mean") == pytest.approx(0.6)
    assert entry(table, "static", "t2", "final_personal_dice_n") == 1
    view = format_table(table)
    assert list(view.columns) == [*before.columns, "final personal Dice",
                                  "personal forgetting (max)"]  # fmt: skip
    cells = view.set_index(["model", "modality"])["final personal Dice"]
    assert cells[("static", "T2")] == "0.600 (n=1)" and cells[("dycnn", "T2")] == "n/a"
    write_tables(table, tmp_path)
    assert "final personal Dice" in (tmp_path / "forgetting.md").read_text()


@pytest.mark.parametrize("partial", [False, True])
def test_rows_of_a_trial_the_scenario_does_not_have_are_refused(
    tmp_path: Path, partial: bool
) -> None:
    """Results checked against their scenario (no seals beside them): a trial it does not
    name is not reported, with --partial or without, whether in results.csv or
    attention.csv."""
    from fedll.report.completeness import Expected

    expected = Expected(rounds=dict.fromkeys(["static-s0", "static-s1", "dycnn-s0"], 2))
    results = make_results()
    results[results["trial"] != "dycnn-s1"].to_csv(tmp_path / "results.csv", index=False)
    build_report(tmp_path, expected, partial=partial)  # the scenario's trials: reported
    results.to_csv(tmp_path / "results.csv", index=False)
    with pytest.raises(DataError) as info:
        build_report(tmp_path, expected, partial=partial)
    assert str(info.value) == (
        f"{tmp_path / 'results.csv'}: trial 'dycnn-s1' is not one of the scenario's trials"
    )
    results[results["trial"] != "dycnn-s1"].to_csv(tmp_path / "results.csv", index=False)
    base = {"model": "dycnn", "ordering": "blocked", "arrival_batch": 2, "strategy": "fedavg",
            "seed": 1, "round": 1, "modality": "t2", "layer": "enc1", "kernel": 0}  # fmt: skip
    rows = [{**base, "trial": t, "mass": 1.0} for t in ("dycnn-s0", "dycnn-s1", "dycnn-s9")]
    pd.DataFrame(rows).to_csv(tmp_path / "attention.csv", index=False)
    with pytest.raises(DataError, match=r"attention.csv: trial 'dycnn-s1' \(and 1 more\) is not"):
        build_report(tmp_path, expected, partial=partial)
