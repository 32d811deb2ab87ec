"""The terminal's forgetting table: the key measures within 120 columns."""

from __future__ import annotations

import pandas as pd
import pytest
from test_report import MATRICES, make_results  # the hand-built run of test_report

from fedll.report import forgetting_table, trial_summary
from fedll.report.terminal import fit, summary_line, terminal_table, trial_counts, varying_axes


def quickstart_like() -> pd.DataFrame:
    """2 models x 2 orderings x 2 batches, as the quickstart's grid."""
    base = make_results()
    parts = []
    for ordering in ("alternating", "blocked"):
        for batch in (2, 4):
            part = base.assign(ordering=ordering, arrival_batch=batch)
            parts.append(part.assign(trial=part["trial"] + f"-{ordering}-{batch}"))
    return pd.concat(parts, ignore_index=True)


def test_key_measures_of_the_hand_built_run() -> None:
    lines = terminal_table(forgetting_table(make_results()))
    assert lines[0].split() == ["model", "modality", "seeds", "final", "fgt.max", "BWT", "learn"]
    static = next(line for line in lines if line.startswith("static") and " T2 " in line)
    # static, t2 over 2 seeds: final mean(0.5, 0.2) = 0.35, std 0.212: half the 95 % interval
    # t(0.975, 1) x 0.212 / sqrt 2 = 12.706 x 0.15 = 1.906; forgetting max mean(0.3, 0.4) =
    # 0.35 (std 0.0707: 0.635); BWT mean(-0.3, -0.4) = -0.35; learning acc. mean(0.8, 0.6) = 0.7
    assert static.split()[1:7] == ["T2", "2", "0.350±1.906", "0.350±0.635", "-0.350±0.635",
                                   "0.700±1.271"]  # fmt: skip
    assert len(lines) == 1 + 2 * len({m for m, _ in MATRICES}) + 1  # and the legend
    assert len(lines[-1]) <= 120 and "95 % interval" in lines[-1]


def test_a_one_seed_run_says_its_rows_are_not_compared() -> None:
    results = make_results()
    lines = terminal_table(forgetting_table(results[results["seed"] == 0]))
    static = next(line for line in lines if line.startswith("static") and " T2 " in line)
    assert static.split()[1:4] == ["T2", "1", "0.500"]  # the mean alone: no interval
    assert lines[-1].startswith("one seed per configuration: its rows are not compared")


@pytest.mark.parametrize("model_name", ["dycnn", "dycnn_topk2_temperature30_std_max_q90_" * 4])
def test_every_line_fits_120_columns(model_name: str) -> None:
    results = quickstart_like()
    results["model"] = results["model"].replace("dycnn", model_name)
    table = forgetting_table(results)
    lines = terminal_table(table)
    assert all(len(line) <= 120 for line in lines), max(lines, key=len)
    assert varying_axes(table) == ["ordering", "arrival_batch"]
    assert "ordering, arrival_batch" in lines[0]
    assert len(lines) == 1 + 8 * 2 + 1  # 2 models x 2 orderings x 2 batches x 2 modalities
    rows = [line for line in lines[1:] if "alternating, 2" in line]
    assert len(rows) == 4
    long = [line for line in lines if line.startswith(model_name[:10])]
    assert len(long) == 8
    assert all(("…" in line) == (len(model_name) > 40) for line in long)
    assert all(line.split()[0].endswith(model_name[-5:]) for line in long)  # the end is kept


def test_fit_cuts_the_middle() -> None:
    assert fit("abcdef", 6) == "abcdef"
    assert fit("abcdefg", 6) == "abc…fg"
    assert fit("dycnn_topk2_a", 8) == "dycn…2_a"


def test_summary_line_counts_failed_and_rejected_updates() -> None:
    results = make_results()
    results["failed"], results["rejected"] = "", ""
    results.loc[results["round"] == 1, "failed"] = "site_a;site_b"
    results.loc[(results["round"] == 2) & (results["trial"] == "dycnn-s0"), "rejected"] = "site_b"
    assert trial_counts(trial_summary(results)) == (8, 1)  # 4 trials x 2 sites; 1
    assert summary_line(4, 1, 8, 1) == ("trials: 4 done, 1 failed; updates: 8 failed, 1 rejected")
    # trials of the scenario that were never run (a deployment runs one) are not failures
    assert summary_line(1, 0, 0, 0, not_run=7) == (
        "trials: 1 done, 0 failed, 7 not run; updates: 0 failed, 0 rejected"
    )
