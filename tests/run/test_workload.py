"""The estimate that orders a sweep's trials longest first, worked out by hand on a cohort of
known slice counts, and the size of the Ray worker pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fedll.config import expand_trials, load_scenario
from fedll.data.arrays import CohortArrays, SiteArrays
from fedll.data.slices import CaseSlices
from fedll.models import build_model
from fedll.run.backends import pool_size
from fedll.run.workload import DYNAMIC_COST, TRAIN_PASSES, forward_flops, longest_first, trial_work


def case(patient: str, modality: str, slices: int) -> CaseSlices:
    images = np.zeros((slices, 1, 4, 4), dtype=np.float32)
    return CaseSlices(patient, modality, None, images, images.astype(np.uint8))


@pytest.fixture
def cohort(write_scenario):
    """The tiny scenario (2 T2 + 2 FLAIR patients, one epoch) over slices counted by hand:
    T2 cases of 3 and 5 slices, FLAIR of 2 and 4; test cases of 7 (T2) and 6 (FLAIR)."""
    scenario = load_scenario(write_scenario({"stream": {"arrival_batch": [1, 2]}}))
    spec = scenario.slices
    sites = (
        SiteArrays("hospital-t2", "t2", spec, (case("a", "t2", 3), case("b", "t2", 5))),
        SiteArrays("hospital-flair", "flair", spec, (case("c", "flair", 2), case("d", "flair", 4))),
    )
    test = {"t2": (case("e", "t2", 7),), "flair": (case("f", "flair", 6),)}
    return scenario, CohortArrays(spec=spec, sites=sites, test=test)


def test_work_counts_training_passes_and_every_evaluation(cohort) -> None:
    scenario, arrays = cohort
    one = [t for t in expand_trials(scenario) if t.arrival_batch == 1][0]
    # 4 rounds of one case: 3 + 5 + 2 + 4 slices trained once each; 5 evaluations of 13
    assert trial_work(scenario, one, arrays, lambda name: 1.0) == TRAIN_PASSES * 14 + 5 * 13
    every = scenario.model_copy(
        update={"stream": scenario.stream.model_copy(update={"train_on": "all"})}
    )
    # train_on all: T2 3, FLAIR 2, then T2 3 + 5 and FLAIR 2 + 4
    assert trial_work(every, one, arrays, lambda name: 1.0) == TRAIN_PASSES * 19 + 5 * 13
    assert trial_work(scenario, one, arrays, lambda name: 2.0) == 2 * (TRAIN_PASSES * 14 + 65)


def test_longest_first_puts_small_batches_and_large_models_first(cohort) -> None:
    scenario, arrays = cohort
    trials = expand_trials(scenario)
    # batch 2: 2 rounds, 3 evaluations (42 + 39 = 81) against batch 1's 4 rounds (42 + 65 = 107);
    # the Dy-CNN costs 1.1x: 117.7, 107, 89.1, 81
    ordered = longest_first(scenario, trials, arrays, {"static": 1.0, "dycnn": 1.1}.__getitem__)
    assert [(t.model, t.arrival_batch) for t in ordered] == [
        ("dycnn", 1), ("static", 1), ("dycnn", 2), ("static", 2),
    ]  # fmt: skip


def test_forward_flops_are_the_convolutions_multiply_adds(cohort) -> None:
    scenario, _ = cohort
    spec = scenario.models["static"]
    model = build_model(spec.name, **spec.kwargs()).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, 32, 32))
    convolutions = counter.get_flop_counts()["Global"][torch.ops.aten.convolution]
    assert forward_flops(spec, 32) == convolutions / 2  # FlopCounterMode counts 2 per MAC
    dynamic = forward_flops(scenario.models["dycnn"], 32)
    assert forward_flops(spec, 32) < dynamic < DYNAMIC_COST * forward_flops(spec, 32)


@pytest.mark.parametrize(
    ("limit", "cpus", "gpus", "resources", "size"),
    [
        (8, 1, 0.0, {"CPU": 2.0}, 2),
        (1, 1, 0.0, {"CPU": 2.0}, 1),
        (8, 2, 0.0, {"CPU": 5.0}, 2),
        (8, 1, 0.5, {"CPU": 4.0, "GPU": 1.0}, 2),
        (8, 1, 1.0, {"CPU": 4.0}, 1),
        (8, 1, 0.0, {}, 1),
    ],
)
def test_pool_size(limit, cpus, gpus, resources, size) -> None:
    assert pool_size(limit, cpus, gpus, resources) == size
