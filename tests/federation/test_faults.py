"""Injected faults: when a site raises, what a corrupted update looks like, that the
strategies' update check catches each corruption, and that it cannot catch a Byzantine one."""

from __future__ import annotations

import numpy as np
import pytest

from fedll.config.options import FaultConfig, GaussianNoise, ScaledUpdate
from fedll.federation.faults import corrupt, lost_rounds, raises
from strategies.aggregation import update_problem

STATE = {"w": np.ones((2, 2), np.float32), "b": np.zeros(2, np.float32), "steps": np.array(3)}

# a round's global model as the site received it, and the site's weights after training
RECEIVED = {
    "w": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
    "b": np.array([0.5, -1.0], np.float32),
    "steps": np.array(3, np.int64),
}
TRAINED = {
    "w": np.array([[2.0, 2.0], [1.0, 5.0]], np.float32),  # delta [[1, 0], [-2, 1]]
    "b": np.array([1.0, -1.5], np.float32),  # delta [0.5, -0.5]
    "steps": np.array(5, np.int64),  # trained two steps: sent as it is
}


def test_raise_every_fails_the_rounds_it_names():
    fault = FaultConfig(site="s", raise_every=2)
    assert [raises(fault, r, seed=r) for r in range(1, 7)] == [False, True] * 3


def test_raise_probability_is_seeded():
    assert not any(raises(FaultConfig(site="s"), r, seed=s) for r in range(5) for s in range(5))
    assert not any(raises(None, r, seed=s) for r in range(5) for s in range(5))
    assert all(raises(FaultConfig(site="s", raise_probability=1.0), 1, seed=s) for s in range(20))
    half = FaultConfig(site="s", raise_probability=0.5)
    draws = [raises(half, 1, seed=s) for s in range(400)]
    assert draws == [raises(half, 1, seed=s) for s in range(400)]
    assert 150 < sum(draws) < 250


@pytest.mark.parametrize(
    ("fault", "lost"),
    [
        (None, [False] * 6),
        (FaultConfig(site="s"), [False] * 6),
        (FaultConfig(site="s", raise_every=2), [False, True] * 3),
        (FaultConfig(site="s", raise_every=4), [False, False, False, True, False, False]),
        (FaultConfig(site="s", raise_probability=0.5), [False] * 6),  # some seeds reply
        (FaultConfig(site="s", raise_probability=1.0), [True] * 6),
        (FaultConfig(site="s", send="nan"), [True] * 6),
        (FaultConfig(site="s", send="wrong-dtype", raise_every=2), [True] * 6),
        (FaultConfig(site="s", send="sign-flip"), [False] * 6),  # Byzantine: it is aggregated
        (FaultConfig(site="s", send=ScaledUpdate(scale=3.0)), [False] * 6),
    ],
)
def test_lost_rounds_are_those_whose_update_never_reaches_the_rule(fault, lost):
    assert lost_rounds(fault, 6).tolist() == lost
    if fault is not None and fault.send is None:  # as raises() decides, whatever the seed
        always = [all(raises(fault, r, seed=s) for s in range(50)) for r in range(1, 7)]
        assert always == lost


@pytest.mark.parametrize(
    ("send", "problem"),
    [
        ("nan", "'w' has non-finite values"),
        ("wrong-shape", "'w' has shape (3,), expected (2, 2)"),
        ("wrong-dtype", "'w' has dtype float64, expected float32"),
    ],
)
def test_each_corruption_is_caught_by_the_update_check(send, problem):
    sent = corrupt(STATE, send, received=STATE, seed=0)
    assert update_problem(STATE, sent) == problem
    assert sent["steps"] == 3 and STATE["w"][0, 0] == 1.0  # integers kept; input untouched


def test_nan_fills_every_floating_tensor():
    sent = corrupt(STATE, "nan", received=STATE, seed=0)
    assert np.isnan(sent["w"]).all() and np.isnan(sent["b"]).all()
    assert update_problem(STATE, corrupt(STATE, None, received=STATE, seed=0)) is None


@pytest.mark.parametrize(
    ("send", "w", "b"),
    [
        # received - (trained - received)
        ("sign-flip", [[0.0, 2.0], [5.0, 3.0]], [0.0, -0.5]),
        # received + 5 (trained - received)
        (ScaledUpdate(scale=5.0), [[6.0, 2.0], [-7.0, 9.0]], [3.0, -3.5]),
        # received + 0 (trained - received): the global model sent back
        (ScaledUpdate(scale=0.0), [[1.0, 2.0], [3.0, 4.0]], [0.5, -1.0]),
        (ScaledUpdate(scale=-0.5), [[0.5, 2.0], [4.0, 3.5]], [0.25, -0.75]),
    ],
    ids=["sign-flip", "scale-5", "scale-0", "scale-minus-half"],
)
def test_a_byzantine_delta_is_taken_against_the_received_model(send, w, b):
    sent = corrupt(TRAINED, send, received=RECEIVED, seed=0)
    np.testing.assert_array_equal(sent["w"], np.array(w, np.float32))
    np.testing.assert_array_equal(sent["b"], np.array(b, np.float32))
    assert sent["steps"] == 5 and sent["steps"].dtype == np.int64  # the counter as trained
    assert {k: v.dtype for k, v in sent.items()} == {k: v.dtype for k, v in TRAINED.items()}
    assert update_problem(RECEIVED, sent) is None  # finite and well-shaped: it is accepted
    assert TRAINED["w"][0, 0] == 2.0 and RECEIVED["w"][0, 0] == 1.0  # inputs untouched


def test_sign_flip_is_a_scale_of_minus_one():
    flipped = corrupt(TRAINED, "sign-flip", received=RECEIVED, seed=0)
    scaled = corrupt(TRAINED, ScaledUpdate(scale=-1.0), received=RECEIVED, seed=0)
    for name in TRAINED:
        np.testing.assert_array_equal(flipped[name], scaled[name])


def test_gaussian_noise_has_the_asked_spread_on_floating_tensors_only():
    trained = {
        "w": np.full((100, 100), 2.0, np.float32),
        "h": np.zeros(10_000, np.float16),
        "steps": np.array(7, np.int64),
    }
    sent = corrupt(trained, GaussianNoise(gaussian=0.1), received=trained, seed=3)
    for name in ("w", "h"):
        noise = sent[name].astype(np.float64) - trained[name]
        assert sent[name].dtype == trained[name].dtype and sent[name].shape == (trained[name].shape)
        assert abs(noise.mean()) < 0.005 and 0.095 < noise.std() < 0.105, name
    assert sent["steps"] == 7
    assert update_problem(trained, sent) is None


def test_gaussian_noise_is_drawn_from_the_site_s_seed_for_the_round():
    noise = GaussianNoise(gaussian=0.5)
    first = corrupt(TRAINED, noise, received=RECEIVED, seed=11)
    again = corrupt(TRAINED, noise, received=RECEIVED, seed=11)
    other = corrupt(TRAINED, noise, received=RECEIVED, seed=12)
    for name in TRAINED:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["w"], other["w"])
    assert not np.array_equal(first["w"], TRAINED["w"])
    # the received model plays no part: noise is added to the weights as trained
    moved = corrupt(TRAINED, noise, received=TRAINED, seed=11)
    np.testing.assert_array_equal(moved["w"], first["w"])


def test_the_parametrised_corruptions_are_read_from_their_yaml_forms():
    assert FaultConfig(site="s", send={"scale": 5}).send == ScaledUpdate(scale=5.0)
    assert FaultConfig(site="s", send={"gaussian": 0.1}).send == GaussianNoise(gaussian=0.1)
    assert FaultConfig(site="s", send="sign-flip").send == "sign-flip"
    dumped = FaultConfig(site="s", send={"scale": -2.5}).model_dump(mode="json")
    assert dumped["send"] == {"scale": -2.5}
    assert FaultConfig.model_validate(dumped) == FaultConfig(site="s", send={"scale": -2.5})
