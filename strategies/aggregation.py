"""Aggregation rules as pure functions over named numpy arrays (no Flower types).

A model state is ``dict[name, np.ndarray]``; ``groups`` maps each name to its parameter
group (see :func:`fedll.models.parameter_groups`): ``kernel_bank``, ``acp``, ``norm``,
``counter`` or ``other``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

State = Mapping[str, np.ndarray]


def normalised(weights: Sequence[float]) -> np.ndarray:
    """Weights scaled to sum to one; raises on an empty or all-zero set."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"aggregation weights must be finite, non-negative, not all zero: {w}")
    return w / w.sum()


def weighted_average(
    states: Sequence[State], weights: Sequence[float], groups: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """FedAvg (McMahan et al. 2017): the weighted mean of every floating-point tensor.

    Counters (integer buffers such as BatchNorm's ``num_batches_tracked`` or the
    temperature schedule's step) are not averaged: the largest value is kept, so an
    annealing schedule never moves backwards. The result keeps each tensor's dtype.
    """
    w = normalised(weights)
    out: dict[str, np.ndarray] = {}
    for name in states[0]:
        stacked = [np.asarray(s[name]) for s in states]
        dtype = stacked[0].dtype
        if groups.get(name) == "counter" or not np.issubdtype(dtype, np.floating):
            out[name] = np.asarray(np.max(np.stack(stacked), axis=0), dtype=dtype)
        else:
            acc = np.zeros(stacked[0].shape, dtype=np.float64)
            for wi, arr in zip(w, stacked, strict=True):
                acc += wi * arr.astype(np.float64)
            out[name] = np.asarray(acc, dtype=dtype)
    return out
