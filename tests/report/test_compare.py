"""Paired comparisons (seed and case parts of the interval), on hand-made results whose answer
is known; the interval's coverage: test_intervals.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from result_rows import frame, result_row

from fedll.errors import ConfigError
from fedll.report import trial_summary
from fedll.report.compare import compare, format_comparison, judge

ARRIVING = ["", "t2", "flair"]
CASE_OFFSETS = (-0.06, -0.02, 0.01, 0.07)


def results(curves: dict, seeds=(0, 1, 2, 3), seed_offset=0.03) -> pd.DataFrame:
    """Per model a function (seed) -> {modality: Dice per round}; every case of a modality is
    that curve plus its own offset, every seed shifted by ``seed_offset * seed``."""
    rows = [
        result_row(model, seed, t, ARRIVING[t], modality, f"{modality}-p{c}",
                   value + offset + seed_offset * seed, trial=f"{model}-s{seed}")
        for model, curve in curves.items()
        for seed in seeds
        for modality, values in curve(seed).items()
        for t, value in enumerate(values)
        for c, offset in enumerate(CASE_OFFSETS)
    ]  # fmt: skip
    return frame(rows)


def baseline_curve(seed):
    return {"t2": [0.1, 0.8, 0.6], "flair": [0.1, 0.2, 0.7]}


def row(table: pd.DataFrame, arm: str, modality: str, measure: str) -> pd.Series:
    found = table[
        (table["arm"] == arm) & (table["modality"] == modality) & (table["measure"] == measure)
    ]
    assert len(found) == 1
    return found.iloc[0]


JITTER = (0.01, -0.01, 0.02, -0.02)
"""A per-seed spread around an effect (mean 0): seeds that agree on its sign, not its size."""


def forgetful(seed):
    """The baseline, but 0.1 more T2 lost in round 2 (give or take the seed's jitter)."""
    return {"t2": [0.1, 0.8, 0.5 - JITTER[seed]], "flair": [0.1, 0.2, 0.7]}


def test_an_extra_loss_on_every_seed_is_found_and_counts():
    """The arm loses 0.1 (+- 0.02 by seed) more T2 Dice in round 2 on every case: the case
    and seed offsets cancel in the pairing, the seeds' spread makes the interval, which
    excludes 0."""
    table = compare(results({"static": baseline_curve, "dycnn": forgetful}), "static")
    forgetting = row(table, "dycnn", "t2", "forgetting_final")
    assert forgetting["difference"] == pytest.approx(0.1)
    # the seeds' part alone (the case offsets cancel): per-seed 0.11, 0.09, 0.12, 0.08, sd
    # sqrt(0.001 / 3) = 0.01826, half-width t(0.975, 3) x 0.01826 / 2 = 3.1824 x 0.00913
    assert forgetting["ci_low"] == pytest.approx(0.1 - 0.02906, abs=1e-4)
    assert forgetting["ci_high"] == pytest.approx(0.1 + 0.02906, abs=1e-4)
    assert forgetting["excludes_zero"] and forgetting["interval_note"] == ""
    assert forgetting["n_seeds"] == 4 and forgetting["n_cases"] == 4
    assert row(table, "dycnn", "t2", "final_dice")["difference"] == pytest.approx(-0.1)


def test_a_zero_width_interval_never_counts():
    """A constant extra loss, the same on every case of every seed: every seed and every
    left-out case gives exactly +0.1, the interval is the point, which measures no
    uncertainty: it does not count. Nor does FLAIR, the same in both arms ([0, 0], or its
    float rounding)."""

    def constant(seed):
        return {"t2": [0.1, 0.8, 0.5], "flair": [0.1, 0.2, 0.7]}

    table = compare(results({"static": baseline_curve, "dycnn": constant}), "static")
    forgetting = row(table, "dycnn", "t2", "forgetting_final")
    assert forgetting["difference"] == pytest.approx(0.1)
    assert forgetting["ci_low"] == pytest.approx(0.1) == forgetting["ci_high"]
    assert not forgetting["excludes_zero"] and forgetting["interval_note"] == "zero width"
    flair = row(table, "dycnn", "flair", "final_dice")
    assert flair["difference"] == pytest.approx(0.0) and not flair["excludes_zero"]
    assert flair["interval_note"] == "zero width"
    assert not table["excludes_zero"].any()
    wide = format_comparison(table)
    t2 = wide[wide["modality"] == "t2"].iloc[0]
    assert t2["forgetting (final)"] == "+0.100 [+0.100, +0.100] (zero width)"
    assert not any("*" in str(cell) for cell in wide.to_numpy().ravel())


def test_the_mean_row_averages_the_modalities():
    """The arm forgets 0.1 (+- jitter) more T2 (final) and the same FLAIR: averaged over both
    modalities +0.05. With a T2 gain on every seed and a larger FLAIR loss on odd seeds
    only, the mean's interval straddles 0 while the T2 gain counts."""
    table = compare(results({"static": baseline_curve, "dycnn": forgetful}), "static")
    mean = row(table, "dycnn", "mean", "forgetting_final")
    assert mean["difference"] == pytest.approx(0.05)
    assert mean["ci_low"] == pytest.approx(0.05 - 0.02906 / 2, abs=1e-4)  # T2's seeds, halved
    assert mean["ci_high"] == pytest.approx(0.05 + 0.02906 / 2, abs=1e-4)
    assert mean["excludes_zero"] and mean["n_cases"] == 8
    assert row(table, "dycnn", "mean", "final_dice")["difference"] == pytest.approx(-0.05)

    def opposed(seed):
        flair = 0.7 - (0.3 if seed % 2 else 0.0)  # odd seeds lose 0.3 FLAIR at the end
        return {"t2": [0.1, 0.8, 0.7 + JITTER[seed]], "flair": [0.1, 0.2, flair]}

    table = compare(results({"static": baseline_curve, "dycnn": opposed}), "static")
    t2, flair = (row(table, "dycnn", m, "final_dice") for m in ("t2", "flair"))
    assert t2["difference"] == pytest.approx(0.1) and t2["excludes_zero"]
    # FLAIR's per-seed differences 0, -0.3, 0, -0.3: mean -0.15, standard error
    # 0.15 x sqrt(4/3) / 2 = 0.0866, half-width t(0.975, 3) x 0.0866 = 0.2756
    assert flair["difference"] == pytest.approx(-0.15)
    assert flair["ci_low"] == pytest.approx(-0.15 - 0.2756, abs=1e-4)
    assert flair["ci_high"] == pytest.approx(-0.15 + 0.2756, abs=1e-4)
    assert not flair["excludes_zero"]
    mean = row(table, "dycnn", "mean", "final_dice")
    assert mean["difference"] == pytest.approx(-0.025)
    assert mean["ci_low"] < 0 < mean["ci_high"] and not mean["excludes_zero"]


def test_a_difference_that_changes_sign_with_the_seed_does_not_count():
    """+0.1 final T2 Dice on even seeds, -0.1 on odd: the estimate is 0 and the seed level of
    the interval (its seeds' part) spreads across it."""

    def alternating(seed):
        shift = 0.1 if seed % 2 == 0 else -0.1
        return {"t2": [0.1, 0.8, 0.6 + shift], "flair": [0.1, 0.2, 0.7]}

    table = compare(results({"static": baseline_curve, "dycnn": alternating}), "static")
    final = row(table, "dycnn", "t2", "final_dice")
    assert final["difference"] == pytest.approx(0.0, abs=1e-12)
    assert final["ci_low"] < 0 < final["ci_high"] and not final["excludes_zero"]


def test_case_level_noise_widens_the_interval_but_a_large_effect_still_counts():
    """Four seeds, the arm's round-2 T2 Dice higher by 0.25 +- a case-specific 0.05 (the
    same on every seed): the case level alone makes the interval, around 0.25, away from 0."""
    noise = dict(zip(range(4), (0.05, -0.05, 0.04, -0.04), strict=True))
    frame = results({"static": baseline_curve, "dycnn": baseline_curve})
    later = (frame["model"] == "dycnn") & (frame["modality"] == "t2") & (frame["round"] == 2)
    case = frame.loc[later, "case"].str[-1].astype(int)
    frame.loc[later, "dice"] += 0.25 + case.map(noise)
    final = row(compare(frame, "static"), "dycnn", "t2", "final_dice")
    assert final["difference"] == pytest.approx(0.25)
    # the same case noise on every seed: the cases' part alone, the t interval of the 4
    # per-case differences: sd(0.05, -0.05, 0.04, -0.04) / 2 = 0.02614, x t(0.975, 3) = 0.0832
    assert final["ci_low"] == pytest.approx(0.25 - 0.0832, abs=1e-4)
    assert final["ci_high"] == pytest.approx(0.25 + 0.0832, abs=1e-4)
    assert final["excludes_zero"]


def test_one_seed_has_no_interval_and_never_counts():
    """With one seed the seed level cannot be resampled: the difference is given, its
    interval is n/a (1 seed), and however large it is it does not count."""
    frame = results({"static": baseline_curve, "dycnn": forgetful}, seeds=(0,))
    table = compare(frame, "static")
    forgetting = row(table, "dycnn", "t2", "forgetting_final")
    assert forgetting["difference"] == pytest.approx(0.11)  # seed 0's jitter: +0.01
    assert np.isnan(forgetting["ci_low"]) and np.isnan(forgetting["ci_high"])
    assert forgetting["interval_note"] == "1 seed" and not table["excludes_zero"].any()
    wide = format_comparison(table)
    assert wide[wide["modality"] == "t2"].iloc[0]["forgetting (final)"] == "+0.110 [n/a: 1 seed]"
    assert not any("nan" in str(cell) for cell in wide.to_numpy().ravel())


def test_an_undefined_measure_is_n_a_never_nan():
    """BWT of FLAIR, the last modality to arrive, has no value in either arm: n/a, with the
    reason, and no cell of the formatted table reads nan."""
    table = compare(results({"static": baseline_curve, "dycnn": forgetful}), "static")
    bwt = row(table, "dycnn", "flair", "bwt")
    assert np.isnan(bwt["difference"]) and bwt["interval_note"] == "undefined"
    assert not bwt["excludes_zero"]
    wide = format_comparison(table)
    flair = wide[wide["modality"] == "flair"].iloc[0]
    assert flair[row(table, "dycnn", "flair", "bwt")["label"]] == "n/a (undefined)"
    assert not any("nan" in str(cell) for cell in wide.to_numpy().ravel())


@pytest.mark.parametrize(
    ("difference", "low", "high", "seeds", "verdict"),
    [
        (0.1, 0.05, 0.15, 4, (True, "")),
        (-0.1, -0.15, -0.05, 3, (True, "")),
        (0.05, -0.01, 0.1, 4, (False, "")),
        (0.05, 1e-17, 0.1, 4, (False, "")),  # 0 in all but rounding: it does not clear 0
        (0.1, 0.1, 0.1, 4, (False, "zero width")),
        (0.0, 0.0, 0.0, 4, (False, "zero width")),
        (1e-17, 1e-17, 2e-17, 10, (False, "zero width")),
        (0.3, np.nan, np.nan, 1, (False, "1 seed")),
        (np.nan, np.nan, np.nan, 4, (False, "undefined")),
        (0.3, np.nan, np.nan, 4, (False, "no interval")),
    ],
)
def test_judge_counts_only_an_interval_that_clears_0(difference, low, high, seeds, verdict):
    assert judge(difference, low, high, seeds) == verdict


def test_the_estimate_is_the_difference_of_the_forgetting_tables_means():
    def other(seed):
        return {"t2": [0.1, 0.7 - 0.03 * seed, 0.4], "flair": [0.1, 0.3, 0.6 + 0.02 * seed]}

    frame = results({"static": baseline_curve, "dycnn": other})
    table = compare(frame, "static")
    summary = trial_summary(frame).groupby(["model", "modality"]).mean(numeric_only=True)
    for measure in ("forgetting_final", "forgetting_max", "bwt", "learning_accuracy", "auc"):
        for modality in ("t2", "flair"):
            expected = (
                summary.loc[("dycnn", modality), measure]
                - summary.loc[("static", modality), measure]
            )
            got = row(table, "dycnn", modality, measure)["difference"]
            assert got == pytest.approx(expected, nan_ok=True), (measure, modality)


def test_bad_baseline_or_axis_is_one_line():
    frame = results({"static": baseline_curve, "dycnn": baseline_curve}, seeds=(0,))
    with pytest.raises(ConfigError, match=r"--compare: 'unet' is not a model of the run"):
        compare(frame, "unet")
    with pytest.raises(ConfigError, match=r"--compare-axis: 'colour' is not a grid axis"):
        compare(frame, "static", axis="colour")


def test_formatted_comparison_marks_what_counts():
    table = compare(results({"static": baseline_curve, "dycnn": forgetful}), "static")
    wide = format_comparison(table)
    t2 = wide[wide["modality"] == "t2"].iloc[0]
    assert t2["forgetting (final)"] == "+0.100 [+0.071, +0.129]*"
    flair = wide[wide["modality"] == "flair"].iloc[0]
    assert flair["final Dice"] == "+0.000 [+0.000, +0.000] (zero width)"
    assert np.all(wide["n_seeds"] == 4)


def test_fedll_report_compare_writes_and_prints_the_comparison(tmp_path):
    from typer.testing import CliRunner

    from fedll.cli import app

    results({"static": baseline_curve, "dycnn": forgetful}).to_csv(
        tmp_path / "results.csv", index=False
    )
    out = CliRunner().invoke(
        app, ["report", str(tmp_path), "--compare", "static", "--bootstrap", "100"]
    )
    assert out.exit_code == 0, out.output
    # --bootstrap (the interval of an earlier fedll) is still accepted, and says it is unused
    assert "--bootstrap no longer applies" in out.output
    table = pd.read_csv(tmp_path / "tables" / "compare_model-static.csv")
    assert set(table["arm"]) == {"dycnn"} and table["excludes_zero"].any()
    assert (
        "+0.100 [+0.071, +0.129]*" in (tmp_path / "tables" / "compare_model-static.md").read_text()
    )
    bad = CliRunner().invoke(app, ["report", str(tmp_path), "--compare", "unet"])
    assert bad.exit_code == 2 and "'unet' is not a model of the run" in bad.output
