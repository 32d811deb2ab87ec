"""The joint upper bound: every site's cases pooled, trained once, evaluated before and after."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedll.config import joint_trial, load_scenario
from fedll.data.arrays import CohortArrays
from fedll.data.prepare import prepare_cohort
from fedll.evaluation.evaluate import evaluate_cases
from fedll.federation.joint import joint_stream, run_joint
from fedll.models import build_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, make_scenario):
    path = make_scenario(tmp_path_factory.mktemp("joint") / "s.yaml", {"joint": True})
    scenario = load_scenario(path)
    return scenario, CohortArrays.load(prepare_cohort(scenario))


def test_one_round_in_which_every_site_arrives(prepared):
    scenario, cohort = prepared
    (only,) = joint_stream(cohort, scenario)
    assert only.index == 1
    assert only.sites == ("hospital-t2", "hospital-flair")
    assert only.modalities == ("t2", "flair")
    assert [len(a.patients) for a in only.arrivals] == [2, 2]


def test_the_joint_trial_evaluates_the_untrained_and_the_trained_model(prepared):
    scenario, cohort = prepared
    threads = torch.get_num_threads()
    trial = joint_trial("static", seed=0)
    rounds = []
    outcome = run_joint(scenario, trial, cohort, on_round=lambda r, n: rounds.append((r, n)))
    torch.set_num_threads(threads)
    frame, _ = outcome.results.frames()
    assert rounds == [(0, 1), (1, 1)]
    assert set(frame["round"]) == {0, 1}
    assert set(frame["strategy"]) == {"none"} and set(frame["cl"]) == {"joint"}
    assert set(frame.loc[frame["round"] == 1, "arriving"]) == {"flair;t2"}
    assert len(frame) == 2 * 2  # one test case per modality, two rounds
    again = run_joint(scenario, trial, cohort)
    torch.set_num_threads(threads)
    assert frame["dice"].tolist() == again.results.frames()[0]["dice"].tolist()  # seeded
    # the outcome keeps the trained model: equal between the seeded runs, not the initial one
    torch.manual_seed(trial.seed)
    spec = scenario.models[trial.model]
    initial = build_model(spec.name, **spec.kwargs()).state_dict()
    assert outcome.state.keys() == initial.keys() == again.state.keys()
    assert all(np.array_equal(outcome.state[k], again.state[k]) for k in initial)
    assert not all(np.array_equal(outcome.state[k], initial[k].numpy()) for k in initial)


def test_the_joint_outcome_carries_the_trained_model(prepared):
    scenario, cohort = prepared
    threads = torch.get_num_threads()
    outcome = run_joint(scenario, joint_trial("static", seed=0), cohort)
    torch.set_num_threads(threads)
    model = build_model(scenario.models["static"].name, **scenario.models["static"].kwargs())
    model.load_state_dict({k: torch.from_numpy(v) for k, v in outcome.state.items()})
    last = outcome.results.frames()[0].query("round == 1")
    scores = evaluate_cases(model, [cohort.test["t2"][0], cohort.test["flair"][0]]).dice
    assert scores == last["dice"].tolist()  # the state is the model evaluated last
