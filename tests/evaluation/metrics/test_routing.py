from __future__ import annotations

import math

import numpy as np

from fedll.evaluation.metrics.routing import chance, decoding_accuracy, stratified_folds


def test_perfectly_separated_routing_decodes_every_slice() -> None:
    t2 = np.tile([0.9, 0.1], (7, 1))
    flair = np.tile([0.2, 0.8], (5, 1))
    features = np.concatenate([t2, flair])
    labels = np.array([0] * 7 + [1] * 5)
    assert decoding_accuracy(features, labels) == 1.0
    assert chance(labels) == 7 / 12


def test_identical_distributions_decode_at_about_chance() -> None:
    rng = np.random.default_rng(0)
    features = rng.dirichlet(np.ones(4), size=400)  # both modalities route alike
    labels = np.repeat([0, 1], 200)
    accuracy = decoding_accuracy(features, labels)
    assert chance(labels) == 0.5
    assert abs(accuracy - 0.5) < 0.08


def test_a_worked_example_and_the_folds() -> None:
    # one feature; fold f of each class is its f-th sample (2 folds)
    features = np.array([[0.0], [1.0], [10.0], [0.4]])
    labels = np.array([0, 0, 1, 1])
    assert stratified_folds(labels, 2).tolist() == [0, 1, 0, 1]
    # fold 0 tests samples 0 (0.0) and 2 (10.0) with means {0: 1.0, 1: 0.4}: 0.0 -> class 1
    # (wrong), 10.0 -> class 0 (wrong); fold 1 tests 1 (1.0) and 3 (0.4) with means
    # {0: 0.0, 1: 10.0}: both -> class 0: one right, one wrong
    assert decoding_accuracy(features, labels) == 0.25


def test_too_few_slices_is_nan() -> None:
    assert math.isnan(decoding_accuracy(np.zeros((3, 2)), np.array([0, 0, 0])))
    assert math.isnan(decoding_accuracy(np.zeros((3, 2)), np.array([0, 0, 1])))
    assert math.isnan(chance(np.array([])))
