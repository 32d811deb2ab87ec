"""Mid-trial checkpoints: the file format, and a trial resumed from one gives the results of
the uninterrupted trial, with every kind of state a trial keeps (server momentum, optimiser
moments, an EWC Fisher, a replay buffer, FedBN's local norms)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedll.checkpoint import Checkpoint, decode, encode
from fedll.config import expand_trials, load_scenario
from fedll.data.arrays import CohortArrays
from fedll.data.prepare import prepare_cohort
from fedll.errors import DataError
from fedll.sweep import TrialTask, execute_task


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
