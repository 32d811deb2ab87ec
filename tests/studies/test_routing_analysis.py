"""The routing study's comparison (studies/routing/analyse.py) on hand-made results: two
rounds (T2, then FLAIR), one test case per modality, so every measure is computed by hand."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedll.report import attention_distance, check_results, last_round

SCRIPT = Path(__file__).resolve().parents[2] / "studies" / "routing" / "analyse.py"


@pytest.fixture(scope="module")
def analyse():
    spec = importlib.util.spec_from_file_location("routing_analyse", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trial_rows(
    model: str, seed: int, t2: list[float], flair: list[float], strategy: str = "fedavg"
) -> list[dict]:
    """Rounds 0 (untrained), 1 (T2 arrives), 2 (FLAIR arrives): Dice of one case each."""
    rows = []
    for rnd, arriving in enumerate(["", "t2", "flair"]):
        for modality, dice in (("t2", t2[rnd]), ("flair", flair[rnd])):
            rows.append(
                {
                    "trial": f"{model}-{strategy}-s{seed}",
                    "model": model,
                    "ordering": "alternating-rounds",
                    "arrival_batch": 2,
                    "arrivals_per_round": 1,
                    "strategy": strategy,
                    "cl": "finetune",
                    "seed": seed,
                    "round": rnd,
                    "sites": "",
                    "arriving": arriving,
                    "modality": modality,
                    "case": f"{modality}-p1",
                    "dice": dice,
                }
            )
    return rows


def attention_rows(model: str, seed: int, t2: list[float], flair: list[float]) -> list[dict]:
    """Last-round (2) attention mass of one layer over two kernels."""
    base = {"trial": f"{model}-fedavg-s{seed}", "model": model, "ordering": "alternating-rounds",
            "arrival_batch": 2, "arrivals_per_round": 1, "strategy": "fedavg", "cl": "finetune",
            "seed": seed, "round": 2, "layer": "enc1"}  # fmt: skip
    return [
        {**base, "modality": modality, "kernel": k, "mass": mass}
        for modality, masses in (("t2", t2), ("flair", flair))
        for k, mass in enumerate(masses)
    ]


def test_each_model_is_compared_with_the_equal_parameter_baseline(analyse):
    rows, attention = [], []
    for seed, lost in enumerate([0.5, 0.6, 0.7]):  # the baseline loses T2 after FLAIR arrives
        rows += trial_rows("static-equal-params", seed, [0, 0.8, 0.8 - lost], [0, 0.2, 0.9])
    for seed, lost in enumerate([0.0, 0.1, 0.2]):  # the routed model keeps most of it
        rows += trial_rows("dycnn-routed", seed, [0, 0.8, 0.8 - lost], [0, 0.2, 0.9])
        attention += attention_rows("dycnn-routed", seed, [1.0, 0.0], [0.25, 0.75])
    for seed, lost in enumerate([0.3, 0.7, 0.5]):  # a spread that overlaps the baseline's
        rows += trial_rows("dycnn", seed, [0, 0.8, 0.8 - lost], [0, 0.2, 0.9])
    # the routed model under dynamic-aware: the baseline has no such trials (excluded), so
    # its FedAvg trials stand in
    for seed, lost in enumerate([0.0, 0.1, 0.2]):
        rows += trial_rows("dycnn-routed", seed, [0, 0.8, 0.8 - lost], [0, 0.2, 0.9], "dyn")
    # joint bounds: one round on both modalities; the routed model's is as good as the baseline's
    for model in ("static-equal-params", "dycnn-routed", "dycnn"):
        for seed, dice in enumerate([0.7, 0.8, 0.9]):
            for modality in ("t2", "flair"):
                rows += [
                    {
                        **row,
                        "trial": f"{model}-joint-s{seed}",
                        "cl": "joint",
                        "strategy": "none",
                        "arrival_batch": 0,
                        "arrivals_per_round": 0,
                        "ordering": "none",
                        "arriving": "" if rnd == 0 else "flair;t2",
                        "round": rnd,
                        "case": f"{modality}-p1",
                        "modality": modality,
                        "dice": 0.0 if rnd == 0 else dice,
                    }  # fmt: skip
                    for rnd, row in enumerate(trial_rows(model, seed, [0] * 3, [0] * 3)[:2])
                ]
    results = check_results(pd.DataFrame(rows))
    trials = analyse.per_trial(results, last_round(attention_distance(pd.DataFrame(attention))))
    full = analyse.compare(trials)
    dynamic = full[full["strategy"] == "dyn"].set_index("model")
    assert list(dynamic.index) == ["dycnn-routed"]
    assert dynamic.loc["dycnn-routed", "forgetting_diff"] == pytest.approx(-0.25)
    table = full[full["strategy"] == "fedavg"].set_index("model")
    assert table.loc["dycnn-routed", "joint_mean"] == pytest.approx(0.8)
    assert table.loc["dycnn-routed", "joint_verdict"] == "tie"

    # the routed model's dynamic-aware trials repeat its FedAvg ones: a tie, difference 0
    by_strategy = analyse.strategy_comparison(trials).set_index("model")
    assert list(by_strategy.index) == ["dycnn-routed"]
    assert by_strategy.loc["dycnn-routed", "strategy"] == "dyn"
    assert by_strategy.loc["dycnn-routed", "forgetting_diff"] == pytest.approx(0.0)
    assert by_strategy.loc["dycnn-routed", "final_verdict"] == "tie"

    tallied = analyse.tally(full).set_index("model")
    assert tallied.loc["dycnn-routed", "settings"] == 2
    assert tallied.loc["dycnn-routed", "forgetting_better"] == 2
    assert bool(tallied.loc["dycnn-routed", "recommended"])
    assert tallied.loc["dycnn", "forgetting_tie"] == 1
    assert not bool(tallied.loc["dycnn", "recommended"])

    # per trial: T2 forgetting = lost, FLAIR forgetting 0 -> forgetting = lost / 2;
    # switch drop: T2 drops by `lost` at the switch, FLAIR has none -> lost
    base, routed, plain = (table.loc[m] for m in ("static-equal-params", "dycnn-routed", "dycnn"))
    assert base["forgetting_mean"] == pytest.approx(0.3)
    assert base["forgetting_std"] == pytest.approx(0.05)
    assert routed["forgetting_mean"] == pytest.approx(0.05)
    assert routed["switch_drop_mean"] == pytest.approx(0.1)
    assert routed["forgetting_diff"] == pytest.approx(-0.25)
    assert routed["forgetting_verdict"] == "better"  # 0.25 > 0.05 + 0.05
    assert routed["final_verdict"] == "better"  # it keeps T2, FLAIR is the same
    assert plain["forgetting_diff"] == pytest.approx(-0.05)  # within 0.1 + 0.05
    assert plain["forgetting_verdict"] == "tie"
    assert base["forgetting_verdict"] == "baseline"
    # TV between (1, 0) and (0.25, 0.75) = 0.75; no attention for the static net
    assert routed["routing_tv"] == pytest.approx(0.75)
    assert np.isnan(base["routing_tv"])
    assert "better" in analyse.to_markdown(table.reset_index())


@pytest.mark.parametrize(
    ("diff", "spread", "lower_is_better", "expected"),
    [
        (-0.2, 0.1, True, "better"),
        (-0.2, 0.2, True, "tie"),  # on the edge of the spread: a tie
        (0.3, 0.1, True, "worse"),
        (0.3, 0.1, False, "better"),
        (0.3, float("nan"), True, "n/a"),  # one seed: no spread, no claim
    ],
)
def test_a_difference_within_the_seed_spread_is_a_tie(
    analyse, diff, spread, lower_is_better, expected
):
    assert analyse.verdict(diff, spread, lower_is_better) == expected


def test_a_design_without_a_verdict_is_not_recommended(analyse):
    # forgetting better in both settings, but a single seed of joint Dice: no spread, "n/a"
    table = pd.DataFrame(
        {
            "model": ["dycnn-x", "dycnn-x"],
            "forgetting_verdict": ["better", "better"],
            "switch_drop_verdict": ["tie", "tie"],
            "final_verdict": ["tie", "tie"],
            "joint_verdict": ["n/a", "n/a"],
        }
    )
    tallied = analyse.tally(table).set_index("model")
    assert tallied.loc["dycnn-x", "forgetting_better"] == 2
    assert not bool(tallied.loc["dycnn-x", "recommended"])
    table["joint_verdict"] = "tie"
    assert bool(analyse.tally(table).set_index("model").loc["dycnn-x", "recommended"])


def test_a_missing_results_file_is_one_line_and_exit_code_2(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"analyse.py: {tmp_path / 'results.csv'}: file not found"
