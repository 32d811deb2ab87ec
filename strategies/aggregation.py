"""Aggregation rules as pure functions over named numpy arrays (no Flower types).

A model state is ``dict[name, np.ndarray]``; ``groups`` maps each name to its parameter
group (see :func:`fedll.models.parameter_groups`): ``kernel_bank``, ``acp``, ``norm``,
``counter`` or ``other``.

- :func:`weighted_average`: FedAvg;
- :func:`attention_weighted_average` (with :func:`kernel_weights` and
  :func:`attention_masses`): dynamic-aware, each kernel of a bank by attention mass;
- :func:`update_problem`: why an update cannot be aggregated (missing or extra names, wrong
  shape or dtype, non-finite values), or None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


def kernel_weights(masses: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Per-site, per-kernel weights from attention mass: (S, *A) for S masses of shape A.

    ``w[s, k] = mass[s, k] / sum_s mass[s, k]``; a kernel no site attended to (total mass 0)
    takes the sample-count ``weights`` instead.
    """
    mass = np.stack([np.asarray(m, dtype=np.float64) for m in masses])
    fallback = normalised(weights).reshape((-1,) + (1,) * (mass.ndim - 1))
    total = mass.sum(axis=0, keepdims=True)
    attended = total > 0
    share = np.divide(mass, total, out=np.zeros_like(mass), where=attended)
    return np.where(attended, share, fallback)


def attention_weighted_average(
    states: Sequence[State],
    weights: Sequence[float],
    groups: Mapping[str, str],
    masses: Sequence[Mapping[str, np.ndarray]],
    banks: Mapping[str, str],
) -> dict[str, np.ndarray]:
    """Dynamic-aware aggregation: each kernel of a bank averaged by attention mass.

    ``banks`` maps a kernel-bank state key to the layer whose attention mixes it, and
    ``masses[s][layer]`` is the attention site ``s`` gave that layer's kernels over its
    training samples, shaped as the bank's leading axes: (K,) for a bank (K, C_out, ...),
    (C_out, G) for a grouped bank (C_out, G, ...). Kernel ``k`` of the bank becomes
    ``sum_s w[s, k] bank_s[k]`` with ``w`` from :func:`kernel_weights`. Every other tensor (the
    ACP included) is :func:`weighted_average` by ``weights`` (sample counts).
    """
    out = weighted_average(states, weights, groups)
    for name, layer in banks.items():
        w = kernel_weights([m[layer] for m in masses], weights)
        stacked = np.stack([np.asarray(s[name], dtype=np.float64) for s in states])
        w = w.reshape(w.shape + (1,) * (stacked.ndim - w.ndim))
        out[name] = np.asarray((w * stacked).sum(axis=0), dtype=np.asarray(states[0][name]).dtype)
    return out


def update_problem(reference: State, update: State) -> str | None:
    """Why ``update`` cannot be aggregated with states shaped like ``reference``, or None.

    Every name of ``reference`` must be there (and no other), with its shape and dtype, and
    every floating-point value must be finite.
    """
    missing = sorted(set(reference) - set(update))
    if missing:
        return f"missing {missing[0]!r}" + (
            f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        )
    extra = sorted(set(update) - set(reference))
    if extra:
        return f"unexpected {extra[0]!r}"
    for name, ref in reference.items():
        ref, arr = np.asarray(ref), np.asarray(update[name])
        if arr.shape != ref.shape:
            return f"{name!r} has shape {arr.shape}, expected {ref.shape}"
        if arr.dtype != ref.dtype:
            return f"{name!r} has dtype {arr.dtype}, expected {ref.dtype}"
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            return f"{name!r} has non-finite values"
    return None


def attention_masses(
    record: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """A site's reported attention mass per layer (``mass/<layer>``: flat lists), each shaped
    as ``shapes[layer]``. ValueError names the layer when one is missing, has the wrong size,
    or holds a negative or non-finite value."""
    masses = {}
    for layer, shape in shapes.items():
        key = f"mass/{layer}"
        if key not in record:
            raise ValueError(f"no attention mass for layer {layer!r}")
        mass = np.asarray(record[key], dtype=np.float64)
        if mass.size != int(np.prod(shape)):
            raise ValueError(
                f"attention mass of layer {layer!r} has {mass.size} values, expected "
                f"{int(np.prod(shape))}"
            )
        if not np.all(np.isfinite(mass)) or np.any(mass < 0):
            raise ValueError(f"attention mass of layer {layer!r} is negative or not finite")
        masses[layer] = mass.reshape(shape)
    return masses
