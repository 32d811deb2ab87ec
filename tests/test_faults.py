"""Injected faults: when a site raises, what a corrupted update looks like, and that the
strategies' update check catches each corruption."""

from __future__ import annotations

import numpy as np
import pytest

from fedll.config.options import FaultConfig
from fedll.faults import corrupt, raises
from strategies.aggregation import update_problem

STATE = {"w": np.ones((2, 2), np.float32), "b": np.zeros(2, np.float32), "steps": np.array(3)}


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
    ("send", "problem"),
    [
        ("nan", "'w' has non-finite values"),
        ("wrong-shape", "'w' has shape (3,), expected (2, 2)"),
        ("wrong-dtype", "'w' has dtype float64, expected float32"),
    ],
)
def test_each_corruption_is_caught_by_the_update_check(send, problem):
    sent = corrupt(STATE, send)
    assert update_problem(STATE, sent) == problem
    assert sent["steps"] == 3 and STATE["w"][0, 0] == 1.0  # integers kept; input untouched


def test_nan_fills_every_floating_tensor():
    sent = corrupt(STATE, "nan")
    assert np.isnan(sent["w"]).all() and np.isnan(sent["b"]).all()
    assert update_problem(STATE, corrupt(STATE, None)) is None
