"""Dice and the forgetting measures, on small Dice matrices worked out by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fedll.evaluation.metrics import (
    area_under_curve,
    backward_transfer,
    dice,
    dice_per_case,
    final_dice,
    forgetting,
    last_trained_round,
    learning_accuracy,
    switch_drops,
)

NAN = float("nan")

# T2 then FLAIR (columns: t2, flair; row 0 = untrained)
R_BLOCKED = np.array(
    [
        [0.1, 0.2],
        [0.8, 0.3],  # round 1 trained t2
        [0.5, 0.7],  # round 2 trained flair
    ]
)
ARR_BLOCKED = [None, 0, 1]

# T2, FLAIR, T2
R_ALT = np.array(
    [
        [0.0, 0.0],
        [0.6, 0.1],  # t2
        [0.2, 0.5],  # flair
        [0.7, 0.3],  # t2
    ]
)
ARR_ALT = [None, 0, 1, 0]


def test_dice_by_hand() -> None:
    pred = np.array([1, 1, 0, 0], dtype=bool)
    truth = np.array([1, 0, 1, 0], dtype=bool)
    # |P & T| = 1, |P| + |T| = 4 -> 2 * 1 / 4
    assert dice(pred, truth) == pytest.approx(0.5)
    assert dice(truth, truth) == 1.0
    # labels 0/2/4 count as tumour wherever > 0; 3-D volumes
    labels = np.zeros((2, 3, 4), dtype=np.uint8)
    labels[0, 1, 1:3] = (2, 4)
    assert dice(labels > 0, labels) == 1.0


def test_dice_empty_cases() -> None:
    empty = np.zeros((4, 4), dtype=bool)
    some = empty.copy()
    some[1, 1] = True
    assert dice(empty, empty) == 1.0
    assert dice(some, empty) == 0.0  # empty truth, non-empty prediction
    assert dice(empty, some) == 0.0  # missed tumour
    with pytest.raises(ValueError, match="shape"):
        dice(empty, np.zeros((4, 5), dtype=bool))


def test_dice_per_case() -> None:
    a = np.array([1, 1, 0, 0], dtype=bool)
    b = np.array([1, 0, 1, 0], dtype=bool)
    np.testing.assert_allclose(dice_per_case([a, a], [a, b]), [1.0, 0.5])
    assert dice_per_case([], []).shape == (0,)
    with pytest.raises(ValueError):
        dice_per_case([a], [])


def test_blocked_3x2_by_hand() -> None:
    R, arr = R_BLOCKED, ARR_BLOCKED
    # running max of t2: 0.1, 0.8, 0.8 -> forgetting 0, 0, 0.3; flair rises: 0, 0, 0
    np.testing.assert_allclose(forgetting(R), [[0, 0], [0, 0], [0.3, 0]])
    # switch t2 -> flair at round 2: R[1, t2] - R[2, t2] = 0.8 - 0.5
    np.testing.assert_allclose(switch_drops(R, arr), [0.3])
    np.testing.assert_allclose(switch_drops(R, arr, modality=0), [0.3])
    assert switch_drops(R, arr, modality=1).shape == (0,)
    # t2 last trained in round 1: R[2, t2] - R[1, t2] = -0.3; flair trained last round: none
    assert backward_transfer(R, arr) == pytest.approx(-0.3)
    assert backward_transfer(R, arr, modality=0) == pytest.approx(-0.3)
    assert np.isnan(backward_transfer(R, arr, modality=1))
    # R[1, t2] = 0.8 and R[2, flair] = 0.7 -> 0.75
    assert learning_accuracy(R, arr) == pytest.approx(0.75)
    assert learning_accuracy(R, arr, modality=0) == pytest.approx(0.8)
    assert learning_accuracy(R, arr, modality=1) == pytest.approx(0.7)
    # mean over rounds 1..2: t2 (0.8 + 0.5) / 2, flair (0.3 + 0.7) / 2
    np.testing.assert_allclose(area_under_curve(R), [0.65, 0.5])
    np.testing.assert_allclose(final_dice(R), [0.5, 0.7])
    np.testing.assert_array_equal(last_trained_round(arr, R), [1, 2])


def test_alternating_4x2_by_hand() -> None:
    R, arr = R_ALT, ARR_ALT
    # t2 running max 0, 0.6, 0.6, 0.7 -> 0, 0, 0.4, 0
    # flair running max 0, 0.1, 0.5, 0.5 -> 0, 0, 0, 0.2
    F = forgetting(R)
    np.testing.assert_allclose(F, [[0, 0], [0, 0], [0.4, 0], [0, 0.2]])
    np.testing.assert_allclose(F[-1], [0.0, 0.2])  # final
    np.testing.assert_allclose(F.max(axis=0), [0.4, 0.2])  # maximum
    # round 2 t2 -> flair: 0.6 - 0.2 = 0.4 on t2; round 3 flair -> t2: 0.5 - 0.3 = 0.2 on flair
    drops = switch_drops(R, arr)
    np.testing.assert_allclose(drops, [0.4, 0.2])
    assert drops.mean() == pytest.approx(0.3)
    assert drops.max() == pytest.approx(0.4)
    np.testing.assert_allclose(switch_drops(R, arr, modality=1), [0.2])
    # t2 trained in the final round: no BWT; flair last in round 2: 0.3 - 0.5
    assert backward_transfer(R, arr) == pytest.approx(-0.2)
    assert np.isnan(backward_transfer(R, arr, modality=0))
    # R[1, t2], R[2, flair], R[3, t2] = 0.6, 0.5, 0.7 -> 0.6; t2 alone (0.6 + 0.7) / 2
    assert learning_accuracy(R, arr) == pytest.approx(0.6)
    assert learning_accuracy(R, arr, modality=0) == pytest.approx(0.65)
    # t2 (0.6 + 0.2 + 0.7) / 3, flair (0.1 + 0.5 + 0.3) / 3
    np.testing.assert_allclose(area_under_curve(R), [0.5, 0.3])


def test_several_modalities_in_one_round() -> None:
    R = np.array([[0.0, 0.0], [0.5, 0.0], [0.6, 0.4], [0.3, 0.6]])
    arr = [None, {0}, (0, 1), [1]]
    # round 2 {t2} -> {t2, flair}: t2 still trains, no drop
    # round 3 {t2, flair} -> {flair}: t2 dropped, 0.6 - 0.3
    np.testing.assert_allclose(switch_drops(R, arr), [0.3])
    # per round: 0.5, mean(0.6, 0.4) = 0.5, 0.6 -> 1.6 / 3
    assert learning_accuracy(R, arr) == pytest.approx(1.6 / 3)
    # t2 per round where it arrives: (0.5 + 0.6) / 2
    assert learning_accuracy(R, arr, modality=0) == pytest.approx(0.55)
    # t2 last trained in round 2: 0.3 - 0.6; flair trained in the last round
    assert backward_transfer(R, arr) == pytest.approx(-0.3)


def test_no_switch_and_empty_rounds() -> None:
    R = np.array([[0.0, 0.1], [0.5, 0.2], [0.4, 0.3]])
    assert switch_drops(R, [None, 0, 0]).shape == (0,)
    # a round without arrival breaks the chain: t2, nothing, flair is not a measured switch
    R4 = np.vstack([R, [0.1, 0.6]])
    assert switch_drops(R4, [None, 0, None, 1]).shape == (0,)
    # the never-trained flair has no BWT; t2 trained last: none at all
    assert np.isnan(backward_transfer(R, [None, 0, 0]))


def test_single_round() -> None:
    R = np.array([[0.2, 0.1]])
    np.testing.assert_allclose(forgetting(R), [[0.0, 0.0]])
    assert switch_drops(R, [None]).shape == (0,)
    assert np.isnan(backward_transfer(R, [None]))
    assert np.isnan(learning_accuracy(R, [None]))
    assert np.isnan(area_under_curve(R)).all()
    np.testing.assert_allclose(final_dice(R), [0.2, 0.1])


def test_nan_propagates_only_where_it_is() -> None:
    R = np.array([[0.1, 0.2], [NAN, 0.3], [0.5, 0.7]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" warnings
        # the running max skips the NaN: t2 max stays 0.1 then 0.5
        F = forgetting(R)
        assert np.isnan(F[1, 0])
        np.testing.assert_allclose(F[[0, 2]], [[0, 0], [0, 0]])
        assert np.isnan(switch_drops(R, ARR_BLOCKED)).all()
        # round 1 has no finite Dice for its arriving modality: only round 2 counts
        assert learning_accuracy(R, ARR_BLOCKED) == pytest.approx(0.7)
        np.testing.assert_allclose(area_under_curve(R), [0.5, 0.5])
        all_nan = np.full((3, 2), NAN)
        assert np.isnan(learning_accuracy(all_nan, ARR_BLOCKED))
        assert np.isnan(area_under_curve(all_nan)).all()


def test_bad_arriving() -> None:
    with pytest.raises(ValueError, match="entries"):
        switch_drops(R_BLOCKED, [None, 0])
    with pytest.raises(ValueError, match="untrained"):
        learning_accuracy(R_BLOCKED, [0, 0, 1])
    with pytest.raises(ValueError, match="outside"):
        backward_transfer(R_BLOCKED, [None, 0, 2])
    with pytest.raises(ValueError, match="shape"):
        forgetting(np.zeros(3))
