"""Mid-trial checkpoints: the file format, and a trial resumed from one gives the results of
the uninterrupted trial, with every kind of state a trial keeps (server momentum, optimiser
moments, an EWC Fisher, a replay buffer, FedBN's local norms); a checkpoint that does not fit
its trial is set aside and the trial runs from round 0."""

from __future__ import annotations

import io
import logging
import random
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedll.config import dump_scenario, expand_trials, load_scenario
from fedll.data.arrays import CohortArrays
from fedll.data.prepare import prepare_cohort
from fedll.errors import DataError
from fedll.federation.flower_private import recorddict_to_wire
from fedll.federation.records import pack, unpack
from fedll.run.checkpoint import Checkpoint, CheckpointError, decode, encode, verify
from fedll.run.execute import execute_task
from fedll.run.store import checkpoint_path, write_checkpoint
from fedll.run.sweep import SweepOptions, run_sweep
from fedll.run.trial_task import TrialTask


def test_a_checkpoint_round_trips_exactly():
    state = RecordDict(
        {
            "optimizer": ArrayRecord({"0/exp_avg": Array(np.arange(6, dtype=np.float32))}),
            "meta": ConfigRecord({"k": 3, "name": "x"}),
        }
    )
    checkpoint = Checkpoint(
        trial_id="t",
        fingerprint="f" * 20,
        round=2,
        model={"w": np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)},
        strategy={"velocity": {"w": np.ones(3)}, "failures": {"1": ["a"]}},
        nodes={2**62 + 5: state},
        rng={"torch": torch.get_rng_state().numpy(), "python": [3, [1, 2], None]},
        results={"rows": [{"dice": 0.1 + 0.2, "case": "p1", "round": 1}]},
    )
    back = decode(encode(checkpoint), "x.ckpt")
    assert back.trial_id == "t" and back.round == 2 and back.fingerprint == "f" * 20
    assert np.array_equal(back.model["w"], checkpoint.model["w"])
    assert back.model["w"].dtype == np.float32
    assert np.array_equal(back.strategy["velocity"]["w"], np.ones(3))
    assert back.strategy["failures"] == {"1": ["a"]}
    assert back.results["rows"][0]["dice"] == 0.1 + 0.2  # floats exactly
    node = back.nodes[2**62 + 5]
    assert np.array_equal(node["optimizer"]["0/exp_avg"].numpy(), np.arange(6, dtype=np.float32))
    assert dict(node["meta"]) == {"k": 3, "name": "x"}
    assert np.array_equal(back.rng["torch"], checkpoint.rng["torch"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip", "not a fedll checkpoint"),
        (b"", "not a fedll checkpoint"),
    ],
)
def test_a_bad_checkpoint_is_one_line_naming_the_file(data, message):
    with pytest.raises(DataError, match=f"^bad.ckpt: {message}"):
        decode(data, "bad.ckpt")


def test_a_checkpoint_of_another_format_version_is_refused():
    import io
    import json

    buffer = io.BytesIO()
    meta = json.dumps({"format": "fedll-checkpoint", "version": 99, "fedll": "9.0"}).encode()
    np.savez(buffer, **{"meta.json": np.frombuffer(meta, dtype=np.uint8)})
    with pytest.raises(DataError, match="checkpoint format 99 .fedll 9.0.; this fedll reads"):
        decode(buffer.getvalue(), "old.ckpt")


STATEFUL = {
    "strategies": [{"name": "fedavgm", "server_momentum": 0.5}, {"name": "fedbn"}],
    "cl": [{"name": "ewc", "weight": 10.0}, {"name": "replay", "buffer": 1}],
    "training": {"epochs": 1, "optimizer_state": "keep"},
    "models": {"static": None},  # the Dy-CNN only: its temperature schedule is state too
    "execution": {"checkpoint_every": 1},
}


@pytest.fixture(scope="module")
def stateful(tmp_path_factory, make_scenario):
    scenario = load_scenario(make_scenario(tmp_path_factory.mktemp("ck") / "s.yaml", STATEFUL))
    return scenario, CohortArrays.load(prepare_cohort(scenario))


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_resumed_trial_gives_the_uninterrupted_results(stateful, restore_torch_threads):
    scenario, cohort = stateful
    trials = expand_trials(scenario)
    assert len(trials) == 4  # fedavgm and fedbn x ewc and replay
    for index, trial in enumerate(trials):
        kept: list[tuple[int, bytes]] = []
        done = execute_task(
            TrialTask(scenario, index),
            cohort,
            on_checkpoint=lambda r, b, kept=kept: kept.append((r, b)),
        )
        rounds = int(done.outcome.results.frames()[0]["round"].max())
        assert [r for r, _ in kept] == list(range(1, rounds))  # every round but the last
        full, full_attention = done.outcome.results.frames()
        for rnd, data in kept[:: max(1, len(kept) - 1)]:  # the first and the last
            again = execute_task(TrialTask(scenario, index, resume=data), cohort)
            frame, attention = again.outcome.results.frames()
            pd.testing.assert_frame_equal(frame, full, check_exact=True)
            pd.testing.assert_frame_equal(attention, full_attention, check_exact=True)
            for key, value in done.outcome.state.items():
                assert np.array_equal(again.outcome.state[key], value), (trial.trial_id, rnd, key)


def test_a_checkpoint_holds_the_sites_and_the_strategys_state(stateful, restore_torch_threads):
    scenario, cohort = stateful
    by_strategy = {}
    for index, trial in enumerate(expand_trials(scenario)):
        if trial.cl.name == "ewc":
            kept: list[bytes] = []
            execute_task(
                TrialTask(scenario, index),
                cohort,
                on_checkpoint=lambda r, b, kept=kept: kept.append(b),
            )
            by_strategy[trial.strategy.name] = decode(kept[-1], "last")
    (fedavgm,) = by_strategy["fedavgm"].strategy["rule"]  # Flower's FedAvgM, its momentum
    assert {"current_arrays", "momentum_vector"} <= set(fedavgm["arrays"])
    for name, kinds in (("fedavgm", {"optimizer", "continual"}), ("fedbn", {"local-norm"})):
        held = set().union(*(set(state) for state in by_strategy[name].nodes.values()))
        assert kinds <= held, name


SCAFFOLD_DITTO = {
    "strategies": [{"name": "scaffold", "server_lr": 0.5}, {"name": "ditto", "lam": 0.5}],
    "training": {"epochs": 1, "batch_size": 8, "lr": 0.01},
    "models": {"dycnn": None},
    "execution": {"checkpoint_every": 1},
}


def test_scaffold_and_ditto_resume_with_every_control_variate_and_personal_score(
    tmp_path, make_scenario, restore_torch_threads
):
    """Alternating arrivals, one site a round: resumed after round 2, the FLAIR site's
    personalised model (last trained in round 2) is scored from the checkpoint, SCAFFOLD's
    c from the strategy's state and each c_i from the sites'."""
    scenario = load_scenario(make_scenario(tmp_path / "s.yaml", SCAFFOLD_DITTO))
    cohort = CohortArrays.load(prepare_cohort(scenario))
    for index, trial in enumerate(expand_trials(scenario)):
        kept: list[tuple[int, bytes]] = []
        done = execute_task(
            TrialTask(scenario, index),
            cohort,
            on_checkpoint=lambda r, b, kept=kept: kept.append((r, b)),
        )
        full, _ = done.outcome.results.frames()
        assert [r for r, _ in kept] == [1, 2, 3]
        saved = decode(kept[1][1], "round 2")
        if trial.strategy.name == "scaffold":
            (rule,) = saved.strategy["rule"]
            assert "control" in rule["arrays"]
            for state in saved.nodes.values():
                assert "scaffold-control" in state
        else:
            assert set(saved.results["personal"]) == {"hospital-t2", "hospital-flair"}
            # a modality's column fills in once one of its sites has trained (T2 in round 1)
            scored = full[full["personal_dice"].notna()].groupby("modality")["round"].min()
            assert scored.to_dict() == {"t2": 1, "flair": 2}
        again = execute_task(TrialTask(scenario, index, resume=kept[1][1]), cohort)
        frame, _ = again.outcome.results.frames()
        pd.testing.assert_frame_equal(frame, full, check_exact=True)
        for key, value in done.outcome.state.items():
            assert np.array_equal(again.outcome.state[key], value), (trial.trial_id, key)


# ---------------------------------------------------------------- a checkpoint that does not fit


def format_1(checkpoint: Checkpoint, wire: dict[int, bytes] | None = None) -> bytes:
    """``checkpoint`` as an earlier fedll wrote it (format 1): its node states in Flower's
    wire format (or the bytes of ``wire``)."""
    wire = wire or {node: recorddict_to_wire(state) for node, state in checkpoint.nodes.items()}
    meta = {
        "format": "fedll-checkpoint", "version": 1, "fedll": "0.9", "trial": checkpoint.trial_id,
        "fingerprint": checkpoint.fingerprint, "round": checkpoint.round,
        "federation": checkpoint.federation, "model": checkpoint.model,
        "strategy": checkpoint.strategy, "rng": checkpoint.rng, "results": checkpoint.results,
        "nodes": {str(n): np.frombuffer(b, dtype=np.uint8) for n, b in wire.items()},
    }  # fmt: skip
    return pack(meta)


def test_a_checkpoint_holds_no_flower_wire_format_and_one_of_format_1_is_still_read():
    state = RecordDict(
        {
            "optimizer": ArrayRecord({"0/exp_avg": Array(np.arange(6, dtype=np.float32))}),
            "meta": ConfigRecord({"k": 3, "name": "x"}),
        }
    )
    checkpoint = Checkpoint("t", "fp", 1, {"w": np.ones(2)}, {}, {7: state}, {}, {})
    with np.load(io.BytesIO(encode(checkpoint)), allow_pickle=False) as npz:
        assert recorddict_to_wire(state) not in {npz[k].tobytes() for k in npz.files}
    for data in (encode(checkpoint), format_1(checkpoint)):
        node = decode(data, "x.ckpt").nodes[7]
        assert list(node) == ["optimizer", "meta"] and dict(node["meta"]) == {"k": 3, "name": "x"}
        assert node["optimizer"]["0/exp_avg"].data == state["optimizer"]["0/exp_avg"].data


def test_a_node_state_that_does_not_decode_is_one_line():
    checkpoint = Checkpoint("t", "fp", 1, {}, {}, {7: RecordDict()}, {}, {})
    data = format_1(checkpoint, {7: b"\xff\xff\xff"})
    with pytest.raises(DataError, match=r"^x.ckpt: .*the state of node 7 does not decode"):
        decode(data, "x.ckpt")
    broken = pack({**unpack(encode(checkpoint)), "nodes": {"7": [{"kind": "arrays"}]}})
    with pytest.raises(DataError, match=r"^x.ckpt: .*the state of node 7 does not decode"):
        decode(broken, "x.ckpt")


def fitting() -> Checkpoint:
    """A checkpoint of trial ``t`` after round 2 of 4 that :func:`verify` takes."""
    from fedll.run.rng_state import rng_states

    rows = [
        {"trial": "t", "round": rnd, "modality": "t2", "case": "p", "dice": 0.5, "hd95": np.nan}
        for rnd in (0, 1, 2)
    ]
    return Checkpoint(
        trial_id="t",
        fingerprint="fp",
        round=2,
        model={"w": np.ones((2, 3), np.float32), "n": np.array(4, np.int64)},
        strategy={"failures": {"1": ["a"]}, "rejected": {}, "rule": [{"v": np.zeros(3)}]},
        nodes={11: RecordDict({"o": ArrayRecord({"m": Array(np.zeros(2, np.float32))})})},
        rng={**rng_states(), "grid": [3, list(random.Random(0).getstate()[1]), None]},
        results={"rows": rows, "attention_rows": [], "failures": {}, "rejected": {"2": ["b"]}},
    )


def fit(checkpoint: Checkpoint) -> Checkpoint:
    return verify(
        checkpoint, "c.ckpt", trial_id="t", fingerprint="fp", rounds=4,
        model={"w": np.zeros((2, 3), np.float32), "n": np.array(0, np.int64)}, nodes={11, 12},
    )  # fmt: skip


def with_model(**arrays):
    return lambda c: replace(c, model={**c.model, **arrays})


def without(name):
    return lambda c: replace(c, model={k: v for k, v in c.model.items() if k != name})


def with_rng(**states):
    return lambda c: replace(c, rng={**c.rng, **states})


def with_results(**parts):
    return lambda c: replace(c, results={**c.results, **parts})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: replace(c, round=99), "after round 99, not one of the trial's rounds 1..3"),
        (lambda c: replace(c, round=0), "taken after round 0"),
        (lambda c: replace(c, round=4), "taken after round 4"),
        (lambda c: replace(c, trial_id="u"), "taken for trial 'u', not 't'"),
        (lambda c: replace(c, fingerprint="other"), "taken for other settings"),
        (without("n"), "its model lacks 'n'"),
        (with_model(extra=np.zeros(1)), "its model has 'extra', which the trial's model does not"),
        (with_model(w=np.ones((3, 2), np.float32)), "'w' is float32[3, 2], the trial's model has"),
        (with_model(w=np.ones((2, 3), np.float64)), "'w' is float64[2, 3]"),
        (with_model(w=np.full((2, 3), np.nan, np.float32)), "model/w holds a value that is not"),
        (with_model(w=np.full((2, 3), np.inf, np.float32)), "not finite"),
        (lambda c: replace(c, strategy={"rule": [{"v": np.array([0.0, np.nan])}]}),
         "strategy/rule/0/v holds a value that is not finite"),
        (lambda c: replace(c, strategy=[1, 2]), "its strategy state is not a mapping"),
        (lambda c: replace(c, nodes={13: RecordDict()}), "node 13, which this trial's grid lacks"),
        (with_rng(torch=np.zeros(3, np.uint8)), "its RNG states are damaged"),
        (with_rng(python=[3, [1, 2], None]), "its RNG states are damaged"),
        (with_rng(grid="x"), "its RNG states are damaged"),
        (with_results(rows=[]), "its results so far lack round 0 (it was taken after 2)"),
        (with_results(rows=[{"trial": "t", "round": 3}]), "do not fit round 2 (rows of round 3)"),
        (with_results(rows=[{"trial": "u", "round": 0}]), "rows of trial 'u'"),
        (with_results(failures={"7": ["a"]}), "do not fit round 2 (events of round 7)"),
        (with_results(rows=None), "its results so far do not fit round 2"),
    ],
)  # fmt: skip
def test_verify_refuses_a_checkpoint_that_does_not_fit_its_trial(change, message):
    assert fit(fitting()).round == 2
    with pytest.raises(CheckpointError) as info:
        fit(change(fitting()))
    assert str(info.value).startswith("c.ckpt: ") and message in str(info.value), info.value


QUICK = {"models": {"dycnn": None}, "execution": {"checkpoint_every": 1}}
"""One trial (the static U-Net, FedAvg, four rounds), a checkpoint after each round."""


@pytest.fixture(scope="module")
def quick(tmp_path_factory, make_scenario):
    """The quick scenario, its trial's files from an uninterrupted sweep, and the trial's
    checkpoint after round 2."""
    root = tmp_path_factory.mktemp("quick")
    scenario = load_scenario(make_scenario(root / "s.yaml", QUICK))
    (trial,) = expand_trials(scenario)
    threads = torch.get_num_threads()
    whole = root / "whole"
    whole.mkdir()
    (whole / "scenario.yaml").write_text(dump_scenario(scenario))
    assert run_sweep(whole, SweepOptions(backend="local")).done == [trial.trial_id]
    files = {p.name: p.read_bytes() for p in (whole / "trials").glob("*.csv")}
    kept: list[tuple[int, bytes]] = []
    cohort = CohortArrays.load(prepare_cohort(scenario))
    execute_task(TrialTask(scenario, 0), cohort, on_checkpoint=lambda r, b: kept.append((r, b)))
    torch.set_num_threads(threads)
    assert [r for r, _ in kept] == [1, 2, 3]
    return scenario, trial, files, kept[1][1]


def garbage_node(data: bytes) -> bytes:
    """The checkpoint with a node's state made one that does not decode."""
    meta = unpack(data)
    node = next(iter(meta["nodes"]))
    return pack({**meta, "nodes": {**meta["nodes"], node: [{"kind": "arrays"}]}})


def changed(change):
    return lambda data: encode(change(decode(data, "c")))


def first_array(transform):
    def change(c: Checkpoint) -> Checkpoint:
        name, array = next(iter(c.model.items()))
        return replace(c, model={**c.model, name: transform(array)})

    return change


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (changed(lambda c: replace(c, round=99)), "taken after round 99"),
        (garbage_node, "does not decode"),
        (changed(first_array(lambda a: np.zeros((*a.shape, 2), a.dtype))), "the trial's model"),
        (changed(first_array(lambda a: np.full_like(a, np.nan))), "not finite"),
        (changed(lambda c: replace(c, strategy={"failures": {}})), "does not fit the trial"),
    ],
    ids=["round-99", "garbage-node", "wrong-shape", "nan-model", "bad-strategy"],
)
def test_a_checkpoint_that_does_not_fit_is_set_aside_and_the_trial_runs_from_round_0(
    quick, tmp_path, tamper, reason, caplog, restore_torch_threads
):
    """Whatever is wrong with it, a kept checkpoint never seals an incomplete trial nor fails
    every rerun: the sweep sets it aside (named in a warning) and the trial's files are
    those of an uninterrupted run."""
    scenario, trial, files, data = quick
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "scenario.yaml").write_text(dump_scenario(scenario))
    bad = tamper(data)
    write_checkpoint(run_dir, trial.trial_id, bad)
    with caplog.at_level(logging.WARNING, logger="fedll.run.store"):
        summary = run_sweep(run_dir, SweepOptions(backend="local"))
    assert (summary.done, summary.failed) == ([trial.trial_id], {})
    kept = checkpoint_path(run_dir, trial.trial_id)
    assert not kept.exists()
    assert (kept.parent / "invalid" / kept.name).read_bytes() == bad
    assert f"{kept}: " in caplog.text and reason in caplog.text
    assert "the trial starts from round 0" in caplog.text
    assert {p.name: p.read_bytes() for p in (run_dir / "trials").glob("*.csv")} == files
