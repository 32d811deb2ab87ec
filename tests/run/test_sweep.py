"""End to end: `fedll run` on the tiny scenario, the report, determinism, resume, a killed
Ray run, and Ray against in-process trials.

The tiny scenario has two sites of two patients (T2 first, then FLAIR) and arrival batches of
one patient, so the alternating stream has 4 rounds: T2, FLAIR, T2, FLAIR; each round is
evaluated on one T2 and one FLAIR test patient, and round 0 is the untrained model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from fedll.config import dump_scenario, expand_trials, load_scenario
from fedll.config.grid import fingerprints
from fedll.models.saved import read_model
from fedll.results.columns import RESULT_COLUMNS
from fedll.run.device import arithmetic
from fedll.run.execute import run_trial
from fedll.run.store import TrialFiles, verify_trial
from fedll.run.sweep import SweepOptions, pending, run_sweep

REQUIRED = [
    "trial",
    "model",
    "ordering",
    "arrival_batch",
    "strategy",
    "seed",
    "round",
    "sites",
    "arriving",
    "modality",
    "case",
    "dice",
]
ROUNDS = [0, 1, 2, 3, 4]
ARRIVING = {0: "", 1: "t2", 2: "flair", 3: "t2", 4: "flair"}
SITES = {0: "", 1: "hospital-t2", 2: "hospital-flair", 3: "hospital-t2", 4: "hospital-flair"}
TRIALS = [
    "static__alternating__b1__fedavg__finetune__s0",
    "dycnn__alternating__b1__fedavg__finetune__s0",
]
# Several optimiser steps per round, so that the models move away from predicting background
# (the tiny U-Nets often still score Dice 0: the comparisons below also compare the Dy-CNN's
# attention mass per kernel, which any change in its weights shows).
LEARNS = {"training": {"epochs": 2, "lr": 0.01, "batch_size": 4}}
# One model and three seeds: three quick trials.
THREE_SEEDS = {"models": {"dycnn": None}, "seeds": [0, 1, 2]}


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def dice_by_case(frame: pd.DataFrame) -> pd.Series:
    return frame.set_index(["trial", "round", "modality", "case"])["dice"].sort_index()


def mass_by_kernel(frame: pd.DataFrame) -> pd.Series:
    return frame.set_index(["trial", "round", "modality", "layer", "kernel"])["mass"].sort_index()


def assert_attention_moved(attention: pd.DataFrame) -> None:
    """The Dy-CNN's attention after the last round differs from the untrained model's: the
    weights did change, so equal results are not the equality of two untrained models."""
    mass = attention.set_index(["round", "modality", "layer", "kernel"])["mass"]
    assert not mass.loc[0].equals(mass.loc[max(ROUNDS)]), "the model did not change"


def result_files(run_dir: Path) -> list[Path]:
    """The results files of the trials a sweep counts as finished: those with a seal."""
    return sorted(p.with_suffix(".csv") for p in (run_dir / "trials").glob("*.json"))


def assert_complete_trial(frame: pd.DataFrame) -> None:
    """Every round 0..4, each with one T2 and one FLAIR test case and its Dice."""
    assert sorted(frame["round"].unique()) == ROUNDS
    for rnd, rows in frame.groupby("round"):
        assert sorted(rows["modality"]) == ["flair", "t2"]
        assert set(rows["arriving"].fillna("")) == {ARRIVING[rnd]}
        assert set(rows["sites"].fillna("")) == {SITES[rnd]}
    assert frame["dice"].between(0, 1).all()


@pytest.fixture
def restore_torch_threads():
    """run_trial sets torch's thread count for the process; put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, make_scenario, run_fedll):
    """`fedll run --local` of the tiny scenario (static and Dy-CNN), through the console script."""
    root = tmp_path_factory.mktemp("local")
    scenario = make_scenario(root / "tiny.yaml", LEARNS)
    run_dir = root / "run"
    done = run_fedll("run", scenario, "--out", run_dir, "--local", cwd=root)
    assert done.returncode == 0, done.stderr
    return scenario, run_dir, done


@pytest.mark.slow
def test_local_run_writes_results_tables_and_plots(local_run):
    _, run_dir, done = local_run
    assert "Traceback" not in done.stderr
    assert f"results: {run_dir / 'results.csv'}" in done.stdout
    results = read(run_dir / "results.csv")
    assert set(REQUIRED) <= set(results.columns)
    assert tuple(results.columns) == RESULT_COLUMNS
    assert sorted(results["trial"].unique()) == sorted(TRIALS)
    assert len(results) == 2 * len(ROUNDS) * 2
    for trial, frame in results.groupby("trial"):
        assert_complete_trial(frame)
        model = str(trial).split("__")[0]
        assert set(frame["model"]) == {model}
        assert set(frame["ordering"]) == {"alternating"}
        assert set(frame["arrival_batch"]) == {1} and set(frame["seed"]) == {0}
        assert set(frame["strategy"]) == {"fedavg"}
    assert sorted(p.stem for p in result_files(run_dir)) == sorted(TRIALS)
    for name in ("forgetting.csv", "forgetting.md", "forgetting.tex"):
        assert (run_dir / "tables" / name).stat().st_size > 0
    plots = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    assert any(p.startswith("curves_") for p in plots)
    assert any(p.startswith("dice_matrix_") for p in plots)
    for plot in plots:
        assert (run_dir / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "scenario.yaml").exists() and (run_dir / "cohort.json").exists()
    forgetting = pd.read_csv(run_dir / "tables" / "forgetting.csv")
    assert set(forgetting["model"]) == {"static", "dycnn"}


@pytest.mark.slow
def test_a_run_logged_to_a_file_says_when_each_trial_finishes(local_run):
    """Its stdout is a pipe, not a terminal: no live bar, a line per trial and its count."""
    _, _, done = local_run
    lines = [line for line in done.stdout.splitlines() if " finished (" in line]
    assert len(lines) == len(TRIALS)
    for k, line in enumerate(lines, 1):
        assert re.fullmatch(
            rf"trial (\S+) finished \({k} of {len(TRIALS)}, \d+:\d\d:\d\d in\)", line
        )
    assert sorted(line.split()[1] for line in lines) == sorted(TRIALS)


@pytest.mark.slow
def test_local_run_ends_with_a_narrow_table_a_summary_and_the_page(local_run):
    _, run_dir, done = local_run
    lines = done.stdout.splitlines()
    assert all(len(line) <= 120 for line in lines), max(lines, key=len)
    assert "trials: 2 done, 0 failed; updates: 0 failed, 0 rejected" in lines
    assert f"report: {run_dir / 'report.html'}" in lines
    assert "learn" in done.stdout and "fgt.max" in done.stdout
    html = (run_dir / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == len(
        list((run_dir / "plots").glob("*.png"))
    )
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["packages"]["torch"] == torch.__version__
    assert provenance["arithmetic"] == arithmetic(torch.device("cpu"))
    for trial in TRIALS:  # each trial's wall time and arithmetic, from where it ran, in its seal
        seal = json.loads((run_dir / "trials" / f"{trial}.json").read_text())
        assert 0 < seal["wall_s"] < 600
        assert f"{seal['wall_s']:.1f} s" in html
        # the machine's, and the precisions the trial ran in (the defaults: auto)
        assert seal["arithmetic"] == arithmetic(torch.device("cpu"), "auto", "auto")
        assert seal["arithmetic"].startswith(provenance["arithmetic"])
    assert f"{seal['arithmetic']}: {len(TRIALS)} trials" in html  # the page counts per arithmetic


@pytest.mark.slow
def test_report_rebuilds_the_tables_from_results_csv_alone(local_run, tmp_path, run_fedll):
    _, run_dir, _ = local_run
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run_dir / "results.csv", alone / "results.csv")
    done = run_fedll("report", alone, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in ("forgetting.csv", "forgetting.md", "forgetting.tex", "trials.csv"):
        assert (alone / "tables" / name).read_text() == (run_dir / "tables" / name).read_text()
    rebuilt = {p.name for p in (alone / "plots").glob("*.png")}
    # attention plots need attention.csv, routing plots routing.csv, montages the previews
    assert rebuilt == {
        p.name
        for p in (run_dir / "plots").glob("*.png")
        if not p.name.startswith(("attention_", "routing_", "montage_"))
    }
    assert "forgetting" not in done.stderr


@pytest.mark.slow
def test_report_in_the_run_dir_after_deleting_the_tables(local_run, tmp_path, run_fedll):
    _, run_dir, _ = local_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = {p.name: p.read_text() for p in (copy / "tables").iterdir()}
    plots = {p.name for p in (copy / "plots").iterdir()}
    shutil.rmtree(copy / "tables")
    shutil.rmtree(copy / "plots")
    done = run_fedll("report", copy, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {p.name: p.read_text() for p in (copy / "tables").iterdir()} == before
    assert {p.name for p in (copy / "plots").iterdir()} == plots


@pytest.mark.slow
def test_run_trial_twice_gives_identical_dice(make_scenario, tmp_path, restore_torch_threads):
    scenario = load_scenario(make_scenario(tmp_path / "tiny.yaml", LEARNS))
    dycnn = [t.model for t in expand_trials(scenario)].index("dycnn")
    frames, attention = [], []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "scenario.yaml").write_text(dump_scenario(scenario))
        path = run_trial(run_dir, dycnn, threads=1)
        frames.append(read(path))
        attention.append(read(path.with_suffix(".attention.csv")))
    assert_complete_trial(frames[0])
    assert_attention_moved(attention[0])
    pd.testing.assert_frame_equal(frames[0], frames[1])
    pd.testing.assert_frame_equal(attention[0], attention[1])


@pytest.mark.slow
def test_a_rerun_runs_only_the_missing_trial(make_scenario, tmp_path, restore_torch_threads):
    scenario = load_scenario(make_scenario(tmp_path / "s.yaml", {**THREE_SEEDS, "seeds": [0, 1]}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "scenario.yaml").write_text(dump_scenario(scenario))
    kept, redone = [t.trial_id for t in expand_trials(scenario)]
    first = run_sweep(run_dir, SweepOptions(backend="local"))
    assert (first.done, first.skipped, first.failed) == ([kept, redone], [], {})
    kept_file = run_dir / "trials" / f"{kept}.csv"
    stamp = kept_file.stat().st_mtime_ns
    (run_dir / "trials" / f"{redone}.csv").unlink()
    time.sleep(0.01)  # so that a rewrite would show in the mtime
    second = run_sweep(run_dir, SweepOptions(backend="local"))
    assert (second.done, second.skipped, second.failed) == ([redone], [kept], {})
    assert kept_file.stat().st_mtime_ns == stamp
    assert_complete_trial(read(run_dir / "trials" / f"{redone}.csv"))
    third = run_sweep(run_dir, SweepOptions(backend="local"))
    assert (third.done, third.skipped) == ([], [kept, redone])


@pytest.mark.slow
def test_a_kept_model_survives_a_resume_and_a_damaged_one_is_redone(
    make_scenario, tmp_path, restore_torch_threads
):
    """Each finished trial keeps its final model, sealed: a resume keeps it as it is; a model
    edited or deleted makes its trial run again (the old one set aside), and the rerun keeps
    the same bytes (the trial is seeded)."""
    scenario = load_scenario(make_scenario(tmp_path / "s.yaml", {**THREE_SEEDS, "seeds": [0, 1]}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "scenario.yaml").write_text(dump_scenario(scenario))
    kept, redone = [t.trial_id for t in expand_trials(scenario)]
    run_sweep(run_dir, SweepOptions(backend="local"))
    models = {t: TrialFiles.of(run_dir, t).model for t in (kept, redone)}
    written = {t: path.read_bytes() for t, path in models.items()}
    for trial_id, path in models.items():
        saved = read_model(path)
        assert saved.metadata.trial == trial_id
        assert saved.metadata.fingerprint == fingerprints(scenario)[trial_id]
    stamps = {t: path.stat().st_mtime_ns for t, path in models.items()}
    time.sleep(0.01)  # so that a rewrite would show in the mtime
    resumed = run_sweep(run_dir, SweepOptions(backend="local"))
    assert (resumed.done, resumed.skipped) == ([], [kept, redone])
    assert {t: path.stat().st_mtime_ns for t, path in models.items()} == stamps
    data = bytearray(written[redone])
    data[-5] ^= 0x01  # one bit of one weight
    models[redone].write_bytes(bytes(data))
    again = run_sweep(run_dir, SweepOptions(backend="local"))
    assert (again.done, again.skipped) == ([redone], [kept])
    assert models[redone].read_bytes() == written[redone]
    assert models[kept].stat().st_mtime_ns == stamps[kept]
    (set_aside,) = (run_dir / "trials" / "invalid").glob(f"{redone}.safetensors.*")
    assert set_aside.read_bytes() == bytes(data)
    models[kept].unlink()
    last = run_sweep(run_dir, SweepOptions(backend="local"))
    assert (last.done, last.skipped) == ([kept], [redone])
    assert models[kept].read_bytes() == written[kept]


def test_without_kept_models_the_trials_are_sealed_and_resumed_alone(
    make_scenario, tmp_path, restore_torch_threads
):
    """``execution.keep_models: false``: no models folder, seals that list no model, and a
    resume that trusts the sealed tables as they are."""
    scenario = load_scenario(
        make_scenario(
            tmp_path / "s.yaml", {**THREE_SEEDS, "seeds": [0], "execution": {"keep_models": False}}
        )
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "scenario.yaml").write_text(dump_scenario(scenario))
    (trial_id,) = [t.trial_id for t in expand_trials(scenario)]
    first = run_sweep(run_dir, SweepOptions(backend="local"))
    assert first.done == [trial_id]
    assert not (run_dir / "models").exists()
    seal = json.loads((run_dir / "trials" / f"{trial_id}.json").read_text())
    assert not any(name.endswith(".safetensors") for name in seal["files"])
    results = run_dir / "trials" / f"{trial_id}.csv"
    stamp = results.stat().st_mtime_ns
    again = run_sweep(run_dir, SweepOptions(backend="local"))
    assert (again.done, again.skipped) == ([], [trial_id])
    assert results.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_a_killed_ray_run_resumes_keeping_finished_trials(
    make_scenario, tmp_path, spawn_fedll, run_fedll
):
    scenario_path = make_scenario(
        tmp_path / "s.yaml", {**THREE_SEEDS, "execution": {"max_concurrent": 1}}
    )
    run_dir = tmp_path / "run"
    proc = spawn_fedll("run", str(scenario_path), "--out", str(run_dir))
    deadline = time.monotonic() + 240
    while not result_files(run_dir):
        assert proc.running(), f"fedll exited early:\n{proc.stderr}"
        assert time.monotonic() < deadline, f"no trial finished in 240 s:\n{proc.stderr}"
        time.sleep(0.05)
    assert proc.running(), "the run finished before it could be killed"
    survivors = proc.kill()
    assert survivors == [], f"processes outlived SIGKILL of the session: {survivors}"

    scenario = load_scenario(run_dir / "scenario.yaml")
    finished = result_files(run_dir)
    assert len(finished) == 1, finished  # one trial at a time, killed as the first finished
    assert_complete_trial(read(finished[0]))
    assert len(pending(run_dir, scenario)) == 2
    # nothing else visible in trials/ is a finished trial's; temporaries are hidden
    for path in (run_dir / "trials").iterdir():
        assert (
            path in finished
            or path.with_suffix(".csv") in finished
            or path.name.endswith((".attention.csv", ".csv", ".previews.npz"))  # cut short
            or path.name == "invalid"
            or (path.name.startswith(".") and path.name.endswith(".tmp"))
        ), path
    stamp = finished[0].stat().st_mtime_ns

    done = run_fedll("run", scenario_path, "--out", run_dir, "--local", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 finished trial(s) were kept" in done.stdout
    # the count goes on from the kept trial: the other two are the 2nd and 3rd of 3
    assert "1 finished trial(s) kept, 2 to run" in done.stdout
    assert [
        line.split("(")[1].split(",")[0]
        for line in done.stdout.splitlines()
        if " finished (" in line
    ] == ["2 of 3", "3 of 3"]
    assert finished[0].stat().st_mtime_ns == stamp
    results = read(run_dir / "results.csv")
    assert sorted(results["trial"].unique()) == sorted(t.trial_id for t in expand_trials(scenario))
    for _, frame in results.groupby("trial"):
        assert_complete_trial(frame)


@pytest.mark.slow
def test_ctrl_c_stops_a_ray_sweep_at_once_keeping_its_finished_trials(
    make_scenario, tmp_path, spawn_fedll
):
    """SIGINT to the command's process group, as a terminal's Ctrl-C sends it: exit 130
    within seconds with one line saying how to resume, Ray and its workers gone, and the
    finished trials kept for the rerun."""
    scenario_path = make_scenario(
        tmp_path / "s.yaml", {**THREE_SEEDS, "execution": {"max_concurrent": 1}}
    )
    run_dir = tmp_path / "run"
    proc = spawn_fedll("run", str(scenario_path), "--out", str(run_dir))
    deadline = time.monotonic() + 240
    while not result_files(run_dir):
        assert proc.running(), f"fedll exited early:\n{proc.stderr}"
        assert time.monotonic() < deadline, f"no trial finished in 240 s:\n{proc.stderr}"
        time.sleep(0.05)
    assert proc.running(), "the run finished before it could be interrupted"
    os.killpg(proc.sid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert (
        f"interrupted; finished trials are kept in {run_dir}/trials, "
        "rerun the same command to resume"
    ) in proc.stderr.splitlines()
    deadline = time.monotonic() + 30
    while left := proc.leftovers():
        assert time.monotonic() < deadline, f"processes outlived the interrupted run: {left}"
        time.sleep(0.2)
    scenario = load_scenario(run_dir / "scenario.yaml")
    finished = result_files(run_dir)
    assert finished and all(
        verify_trial(run_dir, p.stem, fingerprints(scenario)[p.stem]) is None for p in finished
    )
    assert len(pending(run_dir, scenario)) == 3 - len(finished)


@pytest.mark.slow
def test_a_ray_sweep_gives_the_dice_of_the_local_run(local_run, tmp_path, spawn_fedll):
    scenario, local_dir, _ = local_run
    run_dir = tmp_path / "ray"
    proc = spawn_fedll("run", str(scenario), "--out", str(run_dir))
    code = proc.wait(timeout=300)
    assert code == 0, proc.stderr
    local = dice_by_case(read(local_dir / "results.csv"))
    pd.testing.assert_series_equal(dice_by_case(read(run_dir / "results.csv")), local)
    local_attention = read(local_dir / "attention.csv")
    assert_attention_moved(local_attention)
    pd.testing.assert_series_equal(
        mass_by_kernel(read(run_dir / "attention.csv")), mass_by_kernel(local_attention)
    )
    # Ray's daemons and workers go with the driver
    deadline = time.monotonic() + 20
    while (left := proc.leftovers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], f"Ray processes outlived the driver: {left}"


def _copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _tables(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "tables").glob("forgetting.*"))}


@pytest.mark.slow
def test_damaged_trial_files_are_redone_and_the_table_is_an_undamaged_run_s(
    local_run, tmp_path, run_fedll, caplog
):
    """Each way a trial file goes wrong (cut at a row, cut mid-row, header only, empty, no
    seal, copied in from a run of other settings) sets the trial aside, named in a warning,
    so that it runs again; a rerun over a damaged and a foreign trial gives the undamaged
    run's tables byte for byte."""
    scenario, source, _ = local_run
    held = load_scenario(source / "scenario.yaml")
    static, dycnn = (t.trial_id for t in expand_trials(held))
    damages = {
        "cut-at-a-row": lambda p: p.write_text("".join(p.read_text().splitlines(True)[:-3])),
        "cut-mid-row": lambda p: p.write_text(p.read_text()[:-9]),
        "header-only": lambda p: p.write_text(p.read_text().splitlines(True)[0]),
        "empty": lambda p: p.write_bytes(b""),
        "no-seal": lambda p: p.with_suffix(".json").unlink(),
    }
    for name, damage in damages.items():  # the resume's own check, in this process
        run_dir = _copy_run(source, tmp_path / name)
        damage(run_dir / "trials" / f"{dycnn}.csv")
        caplog.clear()
        assert [t.trial_id for t in pending(run_dir, held)] == [dycnn], name
        assert f"{dycnn}.csv" in caplog.text and "runs again" in caplog.text, name
        assert not (run_dir / "trials" / f"{dycnn}.csv").exists(), name
        assert list((run_dir / "trials" / "invalid").glob(f"{dycnn}.*")), name
    # a trial file (and its seal) from a run of other settings: the static trial alone
    other = tmp_path / "other"
    other_scenario = tmp_path / "other.yaml"
    raw = yaml.safe_load(scenario.read_text())
    raw["training"]["epochs"] = 1
    raw["models"] = {"static": raw["models"]["static"]}
    other_scenario.write_text(yaml.safe_dump(raw, sort_keys=False))
    run = run_fedll("run", other_scenario, "--out", other, "--local", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    # end to end: the damaged trial and the foreign one both run again
    run_dir = _copy_run(source, tmp_path / "rerun")
    damages["cut-mid-row"](run_dir / "trials" / f"{dycnn}.csv")
    for suffix in (".csv", ".attention.csv", ".json"):
        shutil.copy(other / "trials" / f"{static}{suffix}", run_dir / "trials")
    done = run_fedll("run", scenario, "--out", run_dir, "--local", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "other settings" in done.stderr and f"{dycnn}.csv" in done.stderr, done.stderr
    assert "were kept" not in done.stdout
    assert _tables(run_dir) == _tables(source)


@pytest.mark.slow
def test_report_refuses_results_that_lack_part_of_their_scenario(local_run, tmp_path, run_fedll):
    _, source, _ = local_run
    run_dir = _copy_run(source, tmp_path / "run")
    # results without their seals (a study's folder): with seals, the report would rebuild
    # results.csv from the trials instead (tests/test_cli.py)
    for seal in (run_dir / "trials").glob("*.json"):
        seal.unlink()
    results = read(run_dir / "results.csv")
    dycnn = results["trial"].iloc[-1]
    cut = results[~((results["trial"] == dycnn) & (results["round"] == 4))]
    cut.to_csv(run_dir / "results.csv", index=False)
    refused = run_fedll("report", run_dir, cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"1 trial(s) incomplete: {dycnn} (rounds 4)" in refused.stderr
    partial = run_fedll("report", run_dir, "--partial", cwd=tmp_path)
    assert partial.returncode == 0, partial.stderr
    assert "1 trial(s) of 2 left out" in partial.stderr
    missing = pd.read_csv(run_dir / "tables" / "missing.csv")
    assert missing.to_dict("records") == [{"trial": dycnn, "missing": "rounds 4"}]
    table = pd.read_csv(run_dir / "tables" / "forgetting.csv")
    assert set(table["model"]) == {"static"}


@pytest.mark.slow
def test_failed_and_rejected_updates_are_one_line_each_on_the_console(
    make_scenario, tmp_path, run_fedll
):
    faults = [
        {"site": "hospital-t2", "raise_every": 3},  # rounds 3 (its second arrival)
        {"site": "hospital-flair", "send": "nan"},
    ]
    scenario = make_scenario(tmp_path / "s.yaml", {"models": {"dycnn": None}, "faults": faults})
    done = run_fedll("run", scenario, "--out", tmp_path / "run", "--local", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trial = "static__alternating__b1__fedavg__finetune__s0"
    assert (
        f"trial {trial}: hospital-t2 failed in round 3; "
        "hospital-flair sent a rejected update in rounds 2, 4"
    ) in " ".join(done.stdout.split())
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_report_into_a_tables_file_and_a_resume_without_its_data_are_one_line(
    local_run, tmp_path, run_fedll
):
    scenario, source, _ = local_run
    run_dir = _copy_run(source, tmp_path / "run")
    shutil.rmtree(run_dir / "tables")
    (run_dir / "tables").write_text("not a folder")
    done = run_fedll("report", run_dir, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{run_dir / 'tables'}" in done.stderr
    # a resumed run whose cohort split lists a file that is gone
    cohort = json.loads((run_dir / "cohort.json").read_text())
    cohort["test"]["t2"][0]["image"] = str(tmp_path / "gone.nii.gz")
    (run_dir / "cohort.json").write_text(json.dumps(cohort))
    done = run_fedll("run", scenario, "--out", run_dir, "--local", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "gone.nii.gz: listed in" in done.stderr
