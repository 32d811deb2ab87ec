"""The run directory's trial files: a trial is finished exactly when its seal verifies; a
damaged, unsealed or foreign file is set aside by name, and only the scenario's own verified
trials are collected."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pandas as pd
import pytest

from fedll.config import Trial
from fedll.errors import DataError
from fedll.federation.stream import Arrival, Round
from fedll.results.rows import TrialResults
from fedll.run.collect import collect, has_seals, recollect
from fedll.run.store import (
    TrialFiles,
    finished,
    trial_events,
    trial_wall_s,
    verify_trial,
    write_trial,
)

TRIAL = Trial(model="dycnn", ordering="alternating", arrival_batch=1, strategy="fedavg", seed=3)
OTHER = Trial(model="static", ordering="alternating", arrival_batch=1, strategy="fedavg", seed=3)
STREAM = (
    Round(1, (Arrival("h-t2", "t2", ("p1",)),)),
    Round(2, (Arrival("h-f", "flair", ("p2",)),)),
)


def results(trial: Trial = TRIAL) -> TrialResults:
    out = TrialResults(trial=trial, stream=STREAM)
    for rnd in (0, 1, 2):
        out.add_round(rnd, "t2", ["a", "b"], [0.1 * rnd, 0.5], {"stem": np.array([1.0, 3.0])})
    out.failures[2] = ["h-f"]
    out.rejected[1] = ["h-t2"]
    out.rejected[2] = ["h-t2"]
    return out


@pytest.fixture
def run_dir(tmp_path):
    write_trial(tmp_path, results(), "fp-a")
    write_trial(tmp_path, results(OTHER), "fp-b")
    return tmp_path


def files(run_dir) -> TrialFiles:
    return TrialFiles.of(run_dir, TRIAL.trial_id)


def test_a_written_trial_verifies_and_its_seal_says_what_happened(run_dir):
    assert verify_trial(run_dir, TRIAL.trial_id, "fp-a") is None
    seal = json.loads(files(run_dir).seal.read_text())
    assert seal["files"][f"{TRIAL.trial_id}.csv"]["rows"] == 6
    assert trial_events(run_dir, TRIAL.trial_id) == {
        "failed": {"h-f": [2]},
        "rejected": {"h-t2": [1, 2]},
    }


def test_the_seal_keeps_the_wall_time_and_arithmetic_and_an_old_seal_without_still_verifies(
    tmp_path,
):
    write_trial(tmp_path, results(), "fp-a", wall_s=12.34567, arithmetic="cpu AVX2, x")
    assert trial_wall_s(tmp_path, TRIAL.trial_id) == 12.346
    seal_path = files(tmp_path).seal
    seal = json.loads(seal_path.read_text())
    assert seal["arithmetic"] == "cpu AVX2, x"
    del seal["wall_s"], seal["arithmetic"]  # as an earlier fedll wrote it
    seal_path.write_text(json.dumps(seal))
    assert verify_trial(tmp_path, TRIAL.trial_id, "fp-a") is None
    assert trial_wall_s(tmp_path, TRIAL.trial_id) is None


def cut_at_a_row(path):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))


def header_only(path):
    path.write_text(path.read_text().splitlines(keepends=True)[0])


def cut_mid_row(path):
    text = path.read_text()
    path.write_text(text[: len(text) - 7])


def empty(path):
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [cut_at_a_row, header_only, cut_mid_row, empty])
@pytest.mark.parametrize("which", ["results", "attention"])
def test_a_damaged_file_does_not_verify_and_is_set_aside(run_dir, damage, which, caplog):
    target = getattr(files(run_dir), which)
    damage(target)
    reason = verify_trial(run_dir, TRIAL.trial_id, "fp-a")
    assert reason == f"{target.name} differs from what was written (cut short or edited)"
    with caplog.at_level(logging.WARNING, logger="fedll.run.store"):
        done = finished(run_dir, {TRIAL.trial_id: "fp-a", OTHER.trial_id: "fp-b"})
    assert done == {OTHER.trial_id}
    assert files(run_dir).existing() == []  # all four moved, none deleted
    moved = sorted(p.name.split(".csv")[0] for p in (run_dir / "trials" / "invalid").iterdir())
    assert len(moved) == 4 and str(files(run_dir).results) in caplog.text
    assert "runs again" in caplog.text


def test_a_trial_left_with_only_its_kept_model_is_set_aside_naming_the_model(tmp_path, caplog):
    # a run whose trials/ was removed but whose models/ was not: the warning names the file
    # that was there, not a results file that is not
    model = TrialFiles.of(tmp_path, TRIAL.trial_id).model
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    with caplog.at_level(logging.WARNING, logger="fedll.run.store"):
        done = finished(tmp_path, {TRIAL.trial_id: "fp-a"})
    assert done == set() and not model.exists()
    assert f"{model}: no seal" in caplog.text and "runs again" in caplog.text
    assert str(TrialFiles.of(tmp_path, TRIAL.trial_id).results) not in caplog.text


def test_an_unsealed_or_foreign_trial_does_not_verify(run_dir):
    assert verify_trial(run_dir, TRIAL.trial_id, "fp-other") == (
        "it was run with other settings (its fingerprint differs)"
    )
    files(run_dir).seal.unlink()
    assert verify_trial(run_dir, TRIAL.trial_id, "fp-a").startswith("no seal")
    seal = files(run_dir).seal
    seal.write_text("{not json")
    assert verify_trial(run_dir, TRIAL.trial_id, "fp-a").startswith("its seal is unreadable")
    other_seal = TrialFiles.of(run_dir, OTHER.trial_id).seal
    seal.write_text(other_seal.read_text())  # a seal copied from another trial
    assert verify_trial(run_dir, TRIAL.trial_id, "fp-b").startswith("its seal is for trial")


def test_collect_reads_the_scenario_s_verified_trials_only(run_dir):
    (run_dir / "trials" / "stranger__x__s0.csv").write_text("trial,dice\nx,1.0\n")
    frame, attention = collect(run_dir, {TRIAL.trial_id: "fp-a"})
    assert set(frame["trial"]) == {TRIAL.trial_id}
    assert len(frame) == 6 and set(attention["trial"]) == {TRIAL.trial_id}
    on_disk = pd.read_csv(run_dir / "results.csv", keep_default_na=False)
    assert on_disk["dice"].tolist() == frame["dice"].tolist()
    # a damaged trial is left out (and would be run again by the sweep)
    cut_mid_row(files(run_dir).results)
    frame, _ = collect(run_dir, {TRIAL.trial_id: "fp-a", OTHER.trial_id: "fp-b"})
    assert set(frame["trial"]) == {OTHER.trial_id}


def test_results_csv_is_replaced_only_after_every_part_was_read(run_dir):
    collect(run_dir, {TRIAL.trial_id: "fp-a", OTHER.trial_id: "fp-b"})
    before = (run_dir / "results.csv").read_bytes()
    # a part that verifies (its seal was rewritten to match) but is not a results file
    broken = TrialFiles.of(run_dir, OTHER.trial_id)
    broken.results.write_text("not,a\nfedll,file\n")
    seal = json.loads(broken.seal.read_text())
    seal["files"][broken.results.name]["sha256"] = hashlib.sha256(
        broken.results.read_bytes()
    ).hexdigest()
    broken.seal.write_text(json.dumps(seal))
    with pytest.raises(DataError, match=f"{broken.results}: columns differ"):
        collect(run_dir, {TRIAL.trial_id: "fp-a", OTHER.trial_id: "fp-b"})
    assert (run_dir / "results.csv").read_bytes() == before


def test_recollect_rebuilds_what_the_seals_vouch_for_and_names_what_differed(run_dir, caplog):
    prints = {TRIAL.trial_id: "fp-a", OTHER.trial_id: "fp-b"}
    assert has_seals(run_dir) and not has_seals(run_dir / "elsewhere")
    assert recollect(run_dir, prints) == []  # nothing there yet: written, nothing replaced
    collected = {name: (run_dir / name).read_bytes() for name in ("results.csv", "attention.csv")}
    assert recollect(run_dir, prints) == []  # the same again
    results = run_dir / "results.csv"
    results.write_text(results.read_text().replace("0.5,", "0.9,"))  # better Dice
    (run_dir / "routing.csv").write_text("trial,round\nx,1\n")  # no trial has routing rows
    with caplog.at_level(logging.WARNING, logger="fedll.run.collect"):
        replaced = recollect(run_dir, prints)
    assert replaced == [results, run_dir / "routing.csv"]
    assert f"{results} differed from the sealed trial files" in caplog.text
    assert {n: (run_dir / n).read_bytes() for n in collected} == collected
    assert not (run_dir / "routing.csv").exists()
    # a trial edited after its seal: left out, and the seal named
    cut_mid_row(files(run_dir).results)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedll.run.collect"):
        recollect(run_dir, prints)
    assert f"{files(run_dir).seal}: {files(run_dir).results.name} differs" in caplog.text
    frame = pd.read_csv(results)
    assert set(frame["trial"]) == {OTHER.trial_id}


# ---------------------------------------------------------------- the kept model

MODEL = b"model bytes: the store does not parse them" * 10


@pytest.fixture
def with_model(tmp_path):
    write_trial(tmp_path, results(), "fp-a", model=MODEL)
    return tmp_path


def test_the_model_is_written_beside_the_trial_and_listed_in_its_seal(with_model):
    path = files(with_model).model
    assert path == with_model / "models" / f"{TRIAL.trial_id}.safetensors"
    assert path.read_bytes() == MODEL
    seal = json.loads(files(with_model).seal.read_text())
    assert seal["files"][path.name] == {
        "size": len(MODEL),
        "sha256": hashlib.sha256(MODEL).hexdigest(),
    }
    assert verify_trial(with_model, TRIAL.trial_id, "fp-a") is None
    assert sorted(p.name for p in (with_model / "models").iterdir()) == [path.name]  # no temps


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def cut_short(path):
    path.write_bytes(path.read_bytes()[:-1])


@pytest.mark.parametrize("damage", [flip_a_byte, cut_short, empty])
def test_an_altered_model_does_not_verify_and_is_set_aside_with_the_trial(
    with_model, damage, caplog
):
    model = files(with_model).model
    damage(model)
    reason = verify_trial(with_model, TRIAL.trial_id, "fp-a")
    assert reason == f"its model {model} differs from what was written (cut short or edited)"
    with caplog.at_level(logging.WARNING, logger="fedll.run.store"):
        assert finished(with_model, {TRIAL.trial_id: "fp-a"}) == set()
    assert files(with_model).existing() == []
    moved = sorted(p.name.rsplit(".", 1)[0] for p in (with_model / "trials" / "invalid").iterdir())
    assert f"{TRIAL.trial_id}.safetensors" in moved and len(moved) == 5  # with the previews
    assert str(model) in caplog.text


def test_a_missing_model_leaves_the_trial_unfinished(with_model):
    files(with_model).model.unlink()
    reason = verify_trial(with_model, TRIAL.trial_id, "fp-a")
    assert reason == f"its model {files(with_model).model} is missing"
    assert finished(with_model, {TRIAL.trial_id: "fp-a"}) == set()
    assert len(list((with_model / "trials" / "invalid").iterdir())) == 4  # all but the model


def test_collect_ignores_the_model_but_not_its_damage(with_model):
    frame, _ = collect(with_model, {TRIAL.trial_id: "fp-a"})
    assert len(frame) == 6
    flip_a_byte(files(with_model).model)
    frame, _ = collect(with_model, {TRIAL.trial_id: "fp-a"})
    assert frame.empty


def test_sealed_model_is_what_the_seal_lists_for_a_kept_model(with_model, tmp_path_factory):
    """(size, SHA-256) of the seal, found from the model's own path (or a link to it); None
    for a model copied out of its run or without a seal; an unreadable seal is named."""
    from fedll.run.store import sealed_model

    model = files(with_model).model
    listed = (len(MODEL), hashlib.sha256(MODEL).hexdigest())
    assert sealed_model(model) == listed
    link = tmp_path_factory.mktemp("elsewhere") / "linked.safetensors"
    link.symlink_to(model)
    assert sealed_model(link) == listed
    copy = link.with_name("copy.safetensors")
    copy.write_bytes(MODEL)
    assert sealed_model(copy) is None
    write_trial(with_model, results(OTHER), "fp-b")  # a seal without a model
    other = TrialFiles.of(with_model, OTHER.trial_id)
    other.model.write_bytes(MODEL)
    assert sealed_model(other.model) is None
    files(with_model).seal.write_text("{not json")
    with pytest.raises(DataError) as caught:
        sealed_model(model)
    assert str(caught.value).startswith(f"{files(with_model).seal}: the seal of {model} is ")


def test_previews_are_written_sealed_and_read_back(tmp_path):
    from fedll.run.store import trial_previews, write_trial

    out = results()
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    truth = image > 10
    out.add_previews(1, "t2", "a", image, truth, ~truth)
    write_trial(tmp_path, out, "fp-a")
    assert verify_trial(tmp_path, TRIAL.trial_id, "fp-a") is None
    seal = json.loads(files(tmp_path).seal.read_text())
    assert seal["files"][f"{TRIAL.trial_id}.previews.npz"]["rows"] == 1
    (kept,) = trial_previews(tmp_path, TRIAL.trial_id)
    assert (kept["round"], kept["modality"], kept["case"]) == (1, "t2", "a")
    np.testing.assert_array_equal(kept["image"], image)
    np.testing.assert_array_equal(kept["pred"], ~truth)
    restored = TrialResults(trial=TRIAL, stream=out.stream)
    restored.restore(json.loads(json.dumps(out.snapshot())))  # a checkpoint keeps them
    np.testing.assert_array_equal(restored.previews[0]["truth"], truth)
    files(tmp_path).previews.write_bytes(b"edited")
    assert trial_previews(tmp_path, TRIAL.trial_id) is None
    assert verify_trial(tmp_path, TRIAL.trial_id, "fp-a") is not None  # the trial runs again
