"""The paired routing study's rule (studies/routing-paired/analyse.py) on hand-made comparison
rows and trial summaries whose verdict and ratios are known."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "studies" / "routing-paired" / "analyse.py"
SETTINGS = {  # label -> (arrival_batch, arrivals_per_round, cl)
    "stream, 5 patients": (5, 1, "finetune"),
    "stream, 15 patients": (15, 1, "finetune"),
    "federation, 5 patients": (5, 2, "finetune"),
    "joint": (0, 0, "joint"),
}


@pytest.fixture(scope="module")
def analyse():
    spec = importlib.util.spec_from_file_location("routing_paired_analyse", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def comparison(arms: dict[str, dict[str, dict[str, tuple[float, float, float]]]]) -> pd.DataFrame:
    """arm -> setting -> measure -> (difference, low, high), as `fedll report --compare`
    writes them (a per-modality row beside each mean row, which the rule must not read)."""
    rows = []
    for arm, settings in arms.items():
        for setting, measures in settings.items():
            batch, per_round, cl = SETTINGS[setting]
            for measure, (difference, low, high) in measures.items():
                for modality, shift in (("t2", 0.5), ("mean", 0.0)):
                    rows.append(
                        {
                            "ordering": "none" if cl == "joint" else "alternating-rounds",
                            "arrival_batch": batch,
                            "strategy": "none" if cl == "joint" else "fedavg",
                            "arrivals_per_round": per_round,
                            "cl": cl,
                            "arm": arm,
                            "baseline": "static-equal-params",
                            "modality": modality,
                            "measure": measure,
                            "label": measure,
                            "difference": difference - shift,
                            "ci_low": low - shift,
                            "ci_high": high - shift,
                            "excludes_zero": (low - shift) > 0 or (high - shift) < 0,
                            "n_seeds": 10,
                            "n_cases": 20,
                        }
                    )
    return pd.DataFrame(rows)


LOWER = (-0.2, -0.3, -0.1)
TIE = (-0.05, -0.15, 0.05)
HIGHER = (0.2, 0.1, 0.3)
STREAMS = ("stream, 5 patients", "stream, 15 patients", "federation, 5 patients")


def arm(forgetting, final=(TIE, TIE, TIE), joint=TIE, bwt=HIGHER):
    settings = {
        s: {"forgetting_max": f, "final_dice": d, "bwt": bwt}
        for s, f, d in zip(STREAMS, forgetting, final, strict=True)
    }
    return {**settings, "joint": {"final_dice": joint, "forgetting_max": HIGHER}}


def test_the_rule_recommends_only_a_design_that_forgets_less_without_learning_less(analyse):
    table = comparison(
        {
            "good": arm((LOWER, LOWER, TIE)),
            "once": arm((LOWER, TIE, TIE)),
            "mixed": arm((LOWER, LOWER, HIGHER)),
            "learns-less": arm((LOWER, LOWER, LOWER), joint=LOWER),
            "ends-lower": arm((LOWER, LOWER, LOWER), final=(TIE, LOWER, TIE)),
            "static": arm((LOWER, LOWER, LOWER)),
        }
    )
    rows = analyse.rule_rows(table)
    # the mean rows only; the joint setting gives its final Dice as the joint Dice, nothing else
    assert len(rows) == 6 * (2 * 3 + 1)
    assert set(rows["measure"]) == {"forgetting_max", "final_dice", "joint_dice"}
    assert set(rows.loc[rows["measure"] == "joint_dice", "setting"]) == {"joint"}
    verdicts = analyse.verdict(rows).set_index("arm")
    assert verdicts["recommended"].to_dict() == {
        "good": "yes",
        "once": "no",
        "mixed": "no",
        "learns-less": "no",
        "ends-lower": "no",
        "static": "(static)",
    }
    assert verdicts.loc[
        "mixed", ["forgetting_lower", "forgetting_tie", "forgetting_higher"]
    ].tolist() == [2, 0, 1]
    assert verdicts.loc["ends-lower", "final_lower"] == 1
    assert verdicts.loc["learns-less", "joint_lower"]
    table = analyse.main_table(rows, analyse.verdict(rows)).set_index("arm")
    assert table.loc["good", "forgetting (max), stream, 5 patients"] == ("-0.200 [-0.300, -0.100]*")
    assert table.loc["good", "joint Dice"] == "-0.050 [-0.150, +0.050]"
    assert table.loc["good", "forgetting lower / tie / higher"] == "2 / 1 / 0"


def test_stage_2_takes_the_freezable_design_with_the_lowest_mean_forgetting_difference(
    analyse, tmp_path
):
    def diff(value):
        return (value, value - 0.1, value + 0.1)

    arms = {
        "dycnn": arm((diff(-0.1), diff(0.0), diff(0.1))),  # mean 0.0
        "dycnn-quantiles": arm((diff(-0.3), diff(0.1), diff(0.05))),  # mean -0.05
        "dycnn-modality-soft": arm((diff(-0.02), diff(-0.02), diff(-0.02))),  # -0.02
        "dycnn-grouped": arm((diff(0.3), diff(-0.3), diff(-0.03))),  # -0.01
        "dycnn-modality-hard": arm((diff(-0.5), diff(-0.5), diff(-0.5))),  # no routing params
    }
    choice, averages = analyse.stage2_choice(analyse.rule_rows(comparison(arms)))
    assert choice == "dycnn-quantiles"
    assert list(averages.index) == [
        "dycnn-quantiles", "dycnn-modality-soft", "dycnn-grouped", "dycnn",
    ]  # fmt: skip
    assert averages["dycnn-grouped"] == pytest.approx(-0.01)
    path = tmp_path / "stage2.md"
    analyse.write_stage2(analyse.rule_rows(comparison(arms)), path)
    assert "Stage 2 design: **dycnn-quantiles**" in path.read_text()
    assert "| dycnn-grouped | -0.0100 |" in path.read_text()
    frozen = {**arms, "dycnn-quantiles-frozen": arms["dycnn"]}
    analyse.write_stage2(analyse.rule_rows(comparison(frozen)), tmp_path / "again.md")
    assert not (tmp_path / "again.md").exists()  # chosen once, before stage 2 ran
    del arms["dycnn-grouped"]["stream, 15 patients"]
    with pytest.raises(ValueError, match="all three settings of dycnn-grouped"):
        analyse.stage2_choice(analyse.rule_rows(comparison(arms)))


def stream_results(forgets_more: dict[str, set[int]], seeds: range) -> pd.DataFrame:
    """Results of one stream setting (T2 then FLAIR) per model: T2 falls from 0.8 to 0.6 on
    every case, 0.2 further (+- 0.02, alternating with the seed: seeds that agree on the
    sign of the difference, not on its size, so that the interval has a width) for the
    models' seeds in ``forgets_more``; cases differ by an offset (paired away)."""
    rows = []
    for model, worse in forgets_more.items():
        for seed in seeds:
            t2_last = 0.4 + 0.02 * (-1) ** seed if seed in worse else 0.6
            curves = {"t2": [0.1, 0.8, t2_last], "flair": [0.1, 0.2, 0.7]}
            for modality, values in curves.items():
                for t, value in enumerate(values):
                    for c, offset in enumerate((-0.05, 0.0, 0.05)):
                        rows.append(
                            {
                                "trial": f"{model}-s{seed}", "model": model,
                                "ordering": "alternating-rounds", "arrival_batch": 5,
                                "strategy": "fedavg", "arrivals_per_round": 1,
                                "cl": "finetune", "seed": seed, "round": t, "sites": "",
                                "arriving": ["", "t2", "flair"][t], "modality": modality,
                                "case": f"{modality}-p{c}", "dice": value + offset,
                            }
                        )  # fmt: skip
    return pd.DataFrame(rows)


def test_the_rule_on_each_group_of_seeds_alone_shows_where_a_difference_comes_from(analyse):
    """dycnn forgets 0.2 more than the baseline on seeds 5-9 only: on seeds 0-4 alone it ties,
    on seeds 5-9 alone it forgets more."""
    results = stream_results({"static-equal-params": set(), "dycnn": {5, 6, 7, 8, 9}}, range(10))
    table = analyse.by_seed_group(results, analyse.SEED_GROUPS).set_index("arm")
    assert table.loc["dycnn", "seeds 0-4: forgetting lower / tie / higher"] == "0 / 1 / 0"
    assert table.loc["dycnn", "seeds 5-9: forgetting lower / tie / higher"] == "0 / 0 / 1"
    assert table.loc["dycnn", "seeds 0-4: recommended"] == "no"


def test_stage_3_s_dy_cnn_is_judged_against_the_per_modality_norm_control_too(analyse):
    """Against the control the hard-routed arm forgets 0.2 more on every seed (the control
    forgets less than it); a 'yes' against the baseline then becomes a 'no' naming the
    control, and a run without the control has no such comparison."""
    results = stream_results(
        {
            "static-equal-params": set(),
            "static-equal-params-norm": set(),
            "dycnn-modality-hard-norm": set(range(10)),
            "dycnn": set(),
        },
        range(4),
    )
    rows = analyse.against_control(results)
    assert set(rows["arm"]) == {"dycnn-modality-hard-norm"}  # the stage-3 arms only
    forgetting = rows[rows["measure"] == "forgetting_max"].iloc[0]
    assert forgetting["difference"] == pytest.approx(0.1)  # T2 +0.2, FLAIR 0: mean +0.1
    assert forgetting["excludes_zero"]
    control = analyse.verdict(rows)
    assert control.set_index("arm").loc["dycnn-modality-hard-norm", "recommended"] == "no"
    verdicts = pd.DataFrame(
        {"arm": ["dycnn-modality-hard-norm", "dycnn", "static-equal-params-norm"],
         "recommended": ["yes", "yes", "(static)"]}
    )  # fmt: skip
    judged = analyse.with_control(verdicts, control).set_index("arm")["recommended"]
    assert judged.to_dict() == {
        "dycnn-modality-hard-norm": "no (not against static-equal-params-norm)",
        "dycnn": "yes",  # not a stage-3 arm: the control does not apply
        "static-equal-params-norm": "(static)",
    }
    passing = control.assign(recommended="yes")
    assert analyse.with_control(verdicts, passing).equals(verdicts)
    without = results[results["model"] != "static-equal-params-norm"]
    assert analyse.against_control(without) is None


def test_the_learning_ratio_divides_by_the_same_model_s_joint_dice(analyse, tmp_path):
    rows = []
    for seed, (t2, flair, joint_t2, joint_flair) in enumerate(
        [(0.6, 0.8, 0.8, 0.9), (0.8, 0.9, 0.8, 0.9)]
    ):
        for setting in ("stream, 5 patients", "joint"):
            batch, per_round, cl = SETTINGS[setting]
            for modality, la, final in (("t2", t2, joint_t2), ("flair", flair, joint_flair)):
                rows.append(
                    {
                        "model": "static-equal-params",
                        "seed": seed,
                        "arrival_batch": batch,
                        "arrivals_per_round": per_round,
                        "cl": cl,
                        "modality": modality,
                        "learning_accuracy": la if cl != "joint" else final,
                        "final_dice": final if cl == "joint" else la - 0.3,
                        "forgetting_max": 0.4,
                    }
                )
    ratios = analyse.learning(pd.DataFrame(rows)).set_index("modality")
    assert ratios.loc["t2", "ratio"] == pytest.approx(0.7 / 0.8)
    assert ratios.loc["flair", "ratio"] == pytest.approx(0.85 / 0.9)
    assert set(ratios["setting"]) == {"stream, 5 patients"}
    assert (ratios["seeds"] == 2).all()
    plot = analyse.plot_forgetting_vs_joint(pd.DataFrame(rows), tmp_path / "plots" / "f.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000


@pytest.mark.slow
def test_run_sh_runs_reports_compares_and_writes_the_verdict(make_scenario, tmp_path):
    """The study's one command on a tiny scenario of its shape: the trials, fedll's paired
    comparison and the verdict files, then a rerun that resumes (every trial kept)."""
    scenario = make_scenario(
        tmp_path / "s.yaml",
        {
            "models": {
                "static-equal-params": {"name": "static", "base_width": 4, "depth": 2},
                "dycnn": {"name": "dycnn", "base_width": 4, "depth": 2},
                "static": None,
            },
            "seeds": [0, 1],
            "joint": True,
            "execution": {"keep_models": False},
        },
    )
    env = {
        **os.environ,
        "SCENARIO": str(scenario),
        "RUN_DIR": str(tmp_path / "run"),
        "OUT": str(tmp_path / "out"),
        "FEDLL": str(Path(sys.executable).with_name("fedll")),
    }
    script = SCRIPT.with_name("run.sh")
    done = subprocess.run(
        [str(script), "--local"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    verdict = pd.read_csv(out / "verdict.csv")
    assert verdict["arm"].tolist() == ["dycnn"]
    assert verdict.loc[0, "recommended"] in {"yes", "no"}
    rows = pd.read_csv(out / "comparison.csv")
    assert set(rows["setting"]) == {"stream, 1 patients", "joint"}
    assert (rows["n_seeds"] == 2).all()
    assert "| dycnn |" in (out / "verdict.md").read_text()
    assert not (out / "stage2.md").exists()  # a run without the study's candidates chooses none
    assert "no stage 2 design chosen" in done.stderr
    learning = pd.read_csv(out / "learning.csv")
    assert set(learning["model"]) == {"static-equal-params", "dycnn"}
    for name in ("results.csv.gz", "routing.csv.gz", "plots/forgetting_vs_joint.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (tmp_path / "run" / "models").exists()
    assert "revision:" in (out / "provenance.txt").read_text()
    again = subprocess.run(
        [str(script), "--local"], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    # 2 models x 2 seeds, in the stream and as joint bounds
    assert "8 finished trial(s) were kept from an earlier run" in again.stdout
