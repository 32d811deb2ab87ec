"""Trials end to end on the tiny scenario: injected faults, every strategy and CL method, and
the joint bound.

With ``arrivals_per_round: 2`` the tiny stream has two rounds, and in each both sites train
(one T2 and one FLAIR patient each).
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pandas as pd
import pytest
import torch

import fedll.evaluation.evaluate
import strategies.federation as federation
from fedll.config import dump_scenario, load_scenario
from fedll.config.grid import fingerprints
from fedll.config.options import option_names
from fedll.config.strategies import StrategyOptions
from fedll.models.saved import read_model
from fedll.report import build_report, forgetting_table, format_table, trial_summary
from fedll.run.collect import collect
from fedll.run.store import TrialFiles
from fedll.run.sweep import SweepOptions, run_sweep

pytestmark = pytest.mark.slow

DYCNN = {"static": None}  # the tiny scenario's Dy-CNN only
STATIC = {"dycnn": None}
BOTH_PER_ROUND = {
    "stream": {"arrivals_per_round": 2},
    "training": {"epochs": 1, "batch_size": 8, "lr": 0.01},
}
FAULTS = [
    {"site": "hospital-t2", "send": "nan"},
    {"site": "hospital-flair", "raise_every": 2},
]


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def sweep(make_scenario, tmp_path, updates) -> pd.DataFrame:
    """Run every trial of the tiny scenario with ``updates`` in this process; results.csv."""
    scenario = load_scenario(make_scenario(tmp_path / "s.yaml", updates))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "scenario.yaml").write_text(dump_scenario(scenario))
    summary = run_sweep(run_dir, SweepOptions(backend="local"))
    assert summary.failed == {}
    results, _ = collect(run_dir, fingerprints(scenario))
    return results.fillna("")


def test_a_nan_site_and_a_site_failing_every_other_round(
    make_scenario, tmp_path, monkeypatch, caplog, restore_torch_threads
):
    evaluated = []

    def finite_model(model, cases, **kwargs):
        # the global model the federation evaluates after every round
        evaluated.append(all(torch.isfinite(v).all() for v in model.state_dict().values()))
        return evaluate_cases(model, cases, **kwargs)

    evaluate_cases = fedll.evaluation.evaluate.evaluate_cases
    monkeypatch.setattr(fedll.evaluation.evaluate, "evaluate_cases", finite_model)
    updates = {
        **BOTH_PER_ROUND,
        "models": DYCNN,  # dynamic-aware has kernel banks to weigh
        "strategies": ["fedavg", "dynamic-aware"],
        "faults": FAULTS,
    }
    with caplog.at_level(logging.WARNING):
        results = sweep(make_scenario, tmp_path, updates)

    assert evaluated and all(evaluated)  # rounds 0..2 x 2 modalities x 2 trials
    assert len(evaluated) == 3 * 2 * 2
    assert set(results["strategy"]) == {"fedavg", "dynamic-aware"}
    per_round = results.groupby(["strategy", "round"])[["failed", "rejected"]].first()
    for strategy in ("fedavg", "dynamic-aware"):
        # round 1: the NaN update is rejected and the FLAIR site's update is the model;
        # round 2: the FLAIR site raises as well, so the model of round 1 is kept
        assert per_round.loc[strategy].to_dict("index") == {
            0: {"failed": "", "rejected": ""},
            1: {"failed": "", "rejected": "hospital-t2"},
            2: {"failed": "hospital-flair", "rejected": "hospital-t2"},
        }
    kept = results[results["round"] >= 1].pivot_table("dice", ["trial", "case"], "round")
    np.testing.assert_array_equal(kept[1], kept[2])  # round 2 kept round 1's model
    assert "update of site hospital-t2 rejected: " in caplog.text
    assert "non-finite values" in caplog.text
    assert "site hospital-flair failed: raised: " in caplog.text
    assert "injected failure, round 2" in caplog.text
    assert "round 2: no usable update (1 failed, 1 rejected); the global model is kept" in (
        caplog.text
    )
    table = forgetting_table(results)
    assert set(table["failed_updates"]) == {1} and set(table["rejected_updates"]) == {2}
    assert set(trial_summary(results)["failed_updates"]) == {1}
    assert "failed updates" in format_table(table).columns


def test_a_sign_flipping_site_is_accepted_and_moves_the_model(
    make_scenario, tmp_path, restore_torch_threads
):
    """Unlike a NaN update, a Byzantine one passes the server's update check: the round
    aggregates it, and the model differs from the one the same federation learns without it."""
    base = {**BOTH_PER_ROUND, "models": STATIC}
    clean = sweep(make_scenario, tmp_path / "clean", base)
    faults = [{"site": "hospital-t2", "send": "sign-flip"}]
    flipped = sweep(make_scenario, tmp_path / "flipped", {**base, "faults": faults})

    assert (flipped["failed"] == "").all() and (flipped["rejected"] == "").all()
    assert sorted(flipped["round"].unique()) == [0, 1, 2]
    assert set(flipped["arriving"][flipped["round"] == 2]) == {"flair;t2"}  # both sites, both
    (trial_id,) = set(flipped["trial"])
    models = [
        read_model(TrialFiles.of(tmp_path / name / "run", trial_id).model).module.state_dict()
        for name in ("clean", "flipped")
    ]
    assert all(torch.isfinite(v).all() for v in models[1].values())
    moved = [k for k, v in models[0].items() if v.is_floating_point() and not v.equal(models[1][k])]
    assert "head.weight" in moved
    counters = [k for k, v in models[0].items() if not v.is_floating_point()]
    assert counters and all(models[0][k].equal(models[1][k]) for k in counters)
    at_start = clean[clean["round"] == 0].set_index(["case", "modality"])["dice"]
    np.testing.assert_array_equal(  # round 0 is the shared initial model
        at_start, flipped[flipped["round"] == 0].set_index(["case", "modality"])["dice"]
    )


def test_every_strategy_runs_a_healthy_federation(make_scenario, tmp_path, restore_torch_threads):
    # every name the schema knows, Flower's strategies included, two rounds each
    names = [n for n in option_names(StrategyOptions) if n != "fedprox"]
    strategies = [*names, {"name": "fedprox", "mu": 0.1}]
    # three sites train in each round: Krum and Bulyan need 2f + 3 and 4f + 3 replies (f = 0)
    results = sweep(
        make_scenario,
        tmp_path,
        {
            **BOTH_PER_ROUND,
            "sites": [
                {"name": "hospital-t2", "modality": "t2", "patients": 2},
                {"name": "hospital-flair", "modality": "flair", "patients": 2},
                {"name": "hospital-t2-b", "modality": "t2", "patients": 2},
            ],
            "stream": {"arrivals_per_round": 3},
            "models": DYCNN,
            "strategies": strategies,
        },
    )
    assert sorted(results["strategy"].unique()) == sorted([*names, "fedprox-mu0.1"])
    assert (results["failed"] == "").all() and (results["rejected"] == "").all()
    assert sorted(results["round"].unique()) == [0, 1, 2]
    assert results["dice"].between(0, 1).all()
    kept = sorted((tmp_path / "run" / "models").glob("*.safetensors"))
    assert len(kept) == len(strategies)
    for path in kept:  # every final model is finite
        module = read_model(path).module
        assert all(torch.isfinite(v).all() for v in module.state_dict().values()), path.name


def test_scaffold_and_ditto_train_two_rounds_and_ditto_reports_its_personalised_models(
    make_scenario, tmp_path, restore_torch_threads
):
    strategies = [{"name": "scaffold", "server_lr": 0.5}, {"name": "ditto", "lam": 0.5}, "fedavg"]
    results = sweep(
        make_scenario,
        tmp_path,
        {**BOTH_PER_ROUND, "models": STATIC, "strategies": strategies},
    )
    assert set(results["strategy"]) == {"scaffold-serverlr0.5", "ditto-lam0.5", "fedavg"}
    assert (results["failed"] == "").all() and (results["rejected"] == "").all()
    assert sorted(results["round"].unique()) == [0, 1, 2]
    for path in sorted((tmp_path / "run" / "models").glob("*.safetensors")):
        module = read_model(path).module
        assert all(torch.isfinite(v).all() for v in module.state_dict().values()), path.name
    # the personalised models' Dice: after every round of Ditto (both sites train in each),
    # per test case; empty for the other strategies and for the untrained model
    ditto = results["strategy"] == "ditto-lam0.5"
    trained = ditto & (results["round"] >= 1)
    personal = pd.to_numeric(results.loc[trained, "personal_dice"])
    assert personal.between(0, 1).all() and len(personal) == 2 * 2
    assert pd.to_numeric(results.loc[trained, "personal_hd95"], errors="coerce").notna().any()
    assert (results.loc[~trained, "personal_dice"] == "").all()
    # and in the forgetting table: for Ditto's rows only
    report = build_report(tmp_path / "run")
    table = report.table.set_index(["strategy", "modality"])
    final = table["final_personal_dice_mean"]
    assert final.loc["ditto-lam0.5"].between(0, 1).all()
    assert final.drop(index="ditto-lam0.5", level="strategy").isna().all()
    markdown = (tmp_path / "run" / "tables" / "forgetting.md").read_text()
    assert "final personal Dice" in markdown and "personal forgetting (max)" in markdown


def test_cl_methods_and_the_joint_bound_side_by_side(
    make_scenario, tmp_path, restore_torch_threads
):
    cl = ["finetune", "ewc", "lwf", {"name": "replay", "buffer": 1}]
    results = sweep(
        make_scenario,
        tmp_path,
        {"models": STATIC, "cl": cl, "joint": True, "training": BOTH_PER_ROUND["training"]},
    )
    assert sorted(results["cl"].unique()) == sorted(
        ["finetune", "ewc", "lwf", "replay-buffer1", "joint"]
    )
    joint = results[results["cl"] == "joint"]
    assert sorted(joint["round"].unique()) == [0, 1]
    assert set(joint.loc[joint["round"] == 1, "arriving"]) == {"flair;t2"}
    assert set(joint[["ordering", "strategy"]].itertuples(index=False, name=None)) == {
        ("none", "none")
    }
    table = format_table(forgetting_table(results))
    assert set(table["cl"]) == {"finetune", "ewc", "lwf", "replay-buffer1", "joint"}
    assert len(table) == 5 * 2  # one row per configuration and modality


class _NotInProcess:
    """Stands in for ``InProcessGrid`` in the federation's check, so a sweep's trial scores
    its rounds as a deployed one does: on a thread, while the next round trains."""


def test_rounds_scored_while_the_next_one_trains_give_the_same_rows(
    make_scenario, tmp_path, monkeypatch, restore_torch_threads
):
    strategies = [
        {"name": "ditto", "lam": 0.5},
        {"name": "fedavg", "dp": {"noise_multiplier": 0.01, "clipping_norm": 2.0}},
    ]
    updates = {**BOTH_PER_ROUND, "models": STATIC, "strategies": strategies}
    (tmp_path / "in-line").mkdir()
    (tmp_path / "overlapped").mkdir()
    in_line = sweep(make_scenario, tmp_path / "in-line", updates)
    threads = []
    real = federation.evaluate_round

    def watched(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(federation, "InProcessGrid", _NotInProcess)
    monkeypatch.setattr(federation, "evaluate_round", watched)
    overlapped = sweep(make_scenario, tmp_path / "overlapped", updates)
    assert threads and all(name.startswith("fedll-evaluation") for name in threads)
    pd.testing.assert_frame_equal(overlapped, in_line)  # Ditto's and DP's columns included


def test_an_evaluation_that_fails_on_its_thread_fails_the_trial(
    make_scenario, tmp_path, monkeypatch, restore_torch_threads
):
    def broken(results, server_round, *args, **kwargs):
        if server_round == 1:
            raise RuntimeError("scoring broke")

    monkeypatch.setattr(federation, "InProcessGrid", _NotInProcess)
    monkeypatch.setattr(federation, "evaluate_round", broken)
    scenario = load_scenario(
        make_scenario(tmp_path / "s.yaml", {**BOTH_PER_ROUND, "models": STATIC})
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "scenario.yaml").write_text(dump_scenario(scenario))
    summary = run_sweep(run_dir, SweepOptions(backend="local"))
    assert list(summary.failed.values()) == ["RuntimeError: scoring broke"]
