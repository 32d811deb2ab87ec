"""The joint upper bound: one model trained on every site's training cases pooled.

No stream and no federation: all training slices of all sites are shuffled together and
trained for ``training.epochs`` epochs, so each case is seen as often as in a stream that
trains on new arrivals only. The model starts from the same weights as the trial's streams of
the same seed. Its results have the rows of a one-round trial: round 0 (the untrained model)
and round 1, in which every site and both modalities "arrive".
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from fedll.config.grid import Trial
from fedll.config.schema import Scenario
from fedll.data.arrays import CohortArrays
from fedll.evaluation.evaluate import evaluate_round
from fedll.federation.stream import Arrival, Round
from fedll.models import build_model
from fedll.models.inspection import freeze_routing
from fedll.models.saved import model_state
from fedll.results.rows import TrialOutcome, TrialResults
from fedll.training.train import slice_modalities, train_local

logger = logging.getLogger(__name__)


def joint_stream(cohort: CohortArrays, scenario: Scenario) -> tuple[Round]:
    """One round in which every site's cases arrive."""
    arrivals = tuple(
        Arrival(s.name, s.modality, tuple(c.patient for c in cohort.site(s.name).slices))
        for s in scenario.sites
    )
    return (Round(index=1, arrivals=arrivals),)


def run_joint(
    scenario: Scenario,
    trial: Trial,
    cohort: CohortArrays,
    device: torch.device | None = None,
    threads: int = 1,
    on_round: Callable[[int, int], None] | None = None,
) -> TrialOutcome:
    """Train and evaluate the joint model of ``trial`` (``kind="joint"``) on ``device``;
    returns its rows and the trained model's state."""
    torch.set_num_threads(max(1, threads))
    spec = scenario.models[trial.model]
    torch.manual_seed(trial.seed)
    model = build_model(spec.name, **spec.kwargs()).to(device or torch.device("cpu"))
    stream = joint_stream(cohort, scenario)
    results = TrialResults(trial=trial, stream=stream)
    test = cohort.test

    def evaluate(server_round: int) -> None:
        evaluate_round(results, server_round, model, test, scenario.evaluation)
        if on_round is not None:
            on_round(server_round, len(stream))

    evaluate(0)
    cases = [c for s in scenario.sites for c in cohort.site(s.name).slices]
    images = np.concatenate([c.images for c in cases])
    masks = np.concatenate([c.masks for c in cases])
    modalities = slice_modalities(model, [c.modality for c in cases for _ in c.images])
    freeze_routing(model, 1)  # the joint bound is one round
    seed = int(np.random.SeedSequence([trial.seed, 0]).generate_state(1)[0])
    torch.manual_seed(seed)
    result = train_local(model, images, masks, scenario.training, seed, modalities=modalities)
    logger.info(
        "joint %s: %d slices of %d cases, loss %.4f", trial.trial_id, result.samples,
        len(cases), result.loss,
    )  # fmt: skip
    evaluate(1)
    return TrialOutcome(results=results, state=model_state(model))
