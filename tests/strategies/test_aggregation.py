"""Aggregation rules on arrays small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fedll.models import build_model, kernel_banks, parameter_groups
from strategies.aggregation import (
    attention_masses,
    attention_weighted_average,
    kernel_weights,
    update_problem,
    weighted_average,
)

GROUPS = {"conv": "other", "acp": "acp", "bn": "norm", "steps": "counter"}


def test_weighted_average_by_hand():
    a = {"conv": np.array([0.0, 4.0], np.float32), "steps": np.array(3)}
    b = {"conv": np.array([4.0, 0.0], np.float32), "steps": np.array(5)}
    out = weighted_average([a, b], [1, 3], GROUPS)
    # (1 * [0, 4] + 3 * [4, 0]) / 4 = [3, 1]; counters take the max, dtypes are kept
    np.testing.assert_array_equal(out["conv"], [3.0, 1.0])
    assert out["conv"].dtype == np.float32
    assert out["steps"] == 5 and out["steps"].dtype == np.asarray(5).dtype


def test_kernel_weights_by_hand():
    # kernel 0: masses 3 and 1 -> 3/4, 1/4; kernel 2: 1 and 3 -> 1/4, 3/4;
    # kernels 1 and 3: nobody attended, so the sample counts 1 : 3 decide
    w = kernel_weights([np.array([3.0, 0, 1, 0]), np.array([1.0, 0, 3, 0])], [1, 3])
    np.testing.assert_allclose(w, [[0.75, 0.25, 0.25, 0.25], [0.25, 0.75, 0.75, 0.75]])


def test_attention_weighted_average_of_a_bank_by_hand():
    states = [
        {"bank": np.array([[1.0] * 3, [10.0] * 3]), "acp": np.array([2.0])},
        {"bank": np.array([[5.0] * 3, [20.0] * 3]), "acp": np.array([6.0])},
    ]
    masses = [{"layer": np.array([3.0, 1.0])}, {"layer": np.array([1.0, 1.0])}]
    groups = {"bank": "kernel_bank", "acp": "acp"}
    out = attention_weighted_average(states, [1, 3], groups, masses, {"bank": "layer"})
    # kernel 0: 3/4 * 1 + 1/4 * 5 = 2; kernel 1: 1/2 * 10 + 1/2 * 20 = 15
    np.testing.assert_allclose(out["bank"], [[2.0] * 3, [15.0] * 3])
    # the ACP by sample count: 1/4 * 2 + 3/4 * 6 = 5
    np.testing.assert_allclose(out["acp"], [5.0])


def test_attention_weighted_average_of_a_grouped_bank_by_hand():
    # (C_out=2, G=2, 1): one coefficient per output channel and kernel of its group
    states = [
        {"bank": np.array([[[0.0], [4.0]], [[8.0], [2.0]]], np.float32)},
        {"bank": np.array([[[2.0], [6.0]], [[0.0], [6.0]]], np.float32)},
    ]
    masses = [
        {"layer": np.array([[1.0, 0.0], [0.0, 0.0]])},
        {"layer": np.array([[1.0, 2.0], [0.0, 0.0]])},
    ]
    out = attention_weighted_average(
        states, [1, 1], {"bank": "kernel_bank"}, masses, {"bank": "layer"}
    )
    # channel 0: kernel 0 half/half -> 1, kernel 1 only site 1 -> 6;
    # channel 1 unattended: sample counts 1 : 1 -> 4 and 4
    np.testing.assert_allclose(out["bank"], [[[1.0], [6.0]], [[4.0], [4.0]]])
    assert out["bank"].dtype == np.float32


def test_equal_masses_reduce_to_fedavg():
    rng = np.random.default_rng(0)
    states = [{"bank": rng.normal(size=(4, 2, 3))} for _ in range(3)]
    masses = [{"l": np.full(4, n)} for n in (2.0, 4.0, 6.0)]  # proportional to the samples
    out = attention_weighted_average(states, [1, 2, 3], {}, masses, {"bank": "l"})
    expected = weighted_average(states, [1, 2, 3], {})
    np.testing.assert_allclose(out["bank"], expected["bank"])


REFERENCE = {"w": np.zeros((2, 3), np.float32), "steps": np.array(0)}


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"w": np.zeros((2, 3), np.float32), "steps": np.array(4)}, None),
        ({"w": np.full((2, 3), np.nan, np.float32), "steps": np.array(1)}, "non-finite"),
        ({"w": np.full((2, 3), np.inf, np.float32), "steps": np.array(1)}, "non-finite"),
        ({"w": np.zeros((3, 2), np.float32), "steps": np.array(1)}, "shape (3, 2)"),
        ({"w": np.zeros((2, 3), np.float64), "steps": np.array(1)}, "dtype float64"),
        ({"w": np.zeros((2, 3), np.float32)}, "missing 'steps'"),
        ({**REFERENCE, "extra": np.zeros(1)}, "unexpected 'extra'"),
    ],
    ids=["good", "nan", "inf", "shape", "dtype", "missing", "extra"],
)
def test_update_problem(update, reason):
    problem = update_problem(REFERENCE, update)
    if reason is None:
        assert problem is None
    else:
        assert reason in problem


def test_attention_masses_are_shaped_and_checked():
    shapes = {"a": (2,), "b": (2, 2)}
    masses = attention_masses({"mass/a": [1.0, 2.0], "mass/b": [0.0, 1.0, 2.0, 3.0]}, shapes)
    np.testing.assert_array_equal(masses["b"], [[0.0, 1.0], [2.0, 3.0]])
    for record, reason in [
        ({"mass/a": [1.0, 2.0]}, "no attention mass for layer 'b'"),
        ({"mass/a": [1.0], "mass/b": [0.0] * 4}, "has 1 values, expected 2"),
        ({"mass/a": [1.0, -1.0], "mass/b": [0.0] * 4}, "negative or not finite"),
        ({"mass/a": [1.0, float("nan")], "mass/b": [0.0] * 4}, "negative or not finite"),
    ]:
        with pytest.raises(ValueError, match=reason):
            attention_masses(record, shapes)


@pytest.mark.parametrize("name", ["dycnn", "dycnn-grouped"])
def test_kernel_banks_name_every_bank_and_its_attention_shape(name):
    model = build_model(name, base_width=4, depth=2, num_kernels=3)
    banks = kernel_banks(model)
    groups = parameter_groups(model)
    assert set(banks) == {k for k, g in groups.items() if g == "kernel_bank"}
    state = model.state_dict()
    for key, (layer, shape) in banks.items():
        assert key.startswith(f"{layer}.conv.")
        assert tuple(state[key].shape[: len(shape)]) == shape
        assert shape[-1] == 3
    assert kernel_banks(build_model("static", base_width=4, depth=2)) == {}
