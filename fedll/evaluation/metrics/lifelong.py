"""The lifelong-learning measures, as pure functions of a per-round metric matrix.

The measures assume higher is better (Dice, surface Dice); for a distance such as HD95 the
caller negates the matrix (:func:`fedll.report.summary.trial_summary` does). The Dice matrix
``R`` has shape ``(T + 1, M)``: ``R[t, m]`` is the mean Dice on modality ``m`` (in the order
of ``fedll.data.MODALITIES``) after round ``t``; row 0 is the untrained model.
``arriving[t]`` says which modalities trained in round ``t``: ``None``, one index, or a
collection of indices (several sites of different modalities in one federated round);
``arriving[0]`` must be empty. Every measure follows the definitions page of fedll's docs
(docs/definitions.md), which gives its formula; where a choice is open the docstring states it.

NaN in ``R`` (a modality without test cases, a missing round) propagates to the entries computed
from it; the aggregating measures (means over rounds or modalities) skip NaN and return NaN only
when nothing is left, without a RuntimeWarning.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

Arriving = Sequence[int | Collection[int] | None]


def _matrix(R: np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] < 1:
        raise ValueError(f"Dice matrix must have shape (T + 1, M), got {R.shape}")
    return R


def arriving_sets(arriving: Arriving, R: np.ndarray) -> list[frozenset[int]]:
    """Normalise ``arriving`` to one set of modality indices per row of ``R``.

    Raises ValueError when the length differs from ``R``'s rows, an index is out of range, or
    round 0 (the untrained model) has an arrival.
    """
    R = _matrix(R)
    if len(arriving) != R.shape[0]:
        raise ValueError(f"arriving has {len(arriving)} entries for {R.shape[0]} rows of R")
    sets: list[frozenset[int]] = []
    for entry in arriving:
        if entry is None:
            sets.append(frozenset())
        elif isinstance(entry, (int, np.integer)):
            sets.append(frozenset({int(entry)}))
        else:
            sets.append(frozenset(int(m) for m in entry))
    for t, s in enumerate(sets):
        if any(not 0 <= m < R.shape[1] for m in s):
            raise ValueError(f"arriving[{t}] = {sorted(s)} is outside 0..{R.shape[1] - 1}")
    if sets[0]:
        raise ValueError("arriving[0] must be empty: row 0 is the untrained model")
    return sets


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def final_dice(R: np.ndarray) -> np.ndarray:
    """Dice of each modality after the last round: ``R[T]``, shape ``(M,)``."""
    return _matrix(R)[-1].copy()


def forgetting(R: np.ndarray) -> np.ndarray:
    """Forgetting ``F[t, m] = max_{t' <= t} R[t', m] - R[t, m]``, shape ``(T + 1, M)``.

    Chaudhry et al. 2018 (RWalk), indexed by modality rather than by experience. As in their
    definition (``max over l in 0..k-1``) and in docs/definitions.md, ``t'`` ranges from 0, the
    untrained model, not from the first round that trained ``m``: a loss of Dice on a modality
    that has not arrived yet counts too, and ``F >= 0`` wherever ``R[t, m]`` is finite. NaN
    entries of ``R`` are skipped by the running maximum and give NaN only in their own row.
    """
    R = _matrix(R)
    best = np.fmax.accumulate(R, axis=0)
    return best - R


def switch_drops(R: np.ndarray, arriving: Arriving, modality: int | None = None) -> np.ndarray:
    """Dice drops at switches of the arriving modality, in round order: shape ``(n_drops,)``.

    A switch happens at round ``t >= 2`` when the (non-empty) set of modalities arriving in
    round ``t`` differs from the (non-empty) set arriving in round ``t - 1``; for each modality
    ``m`` that arrived in ``t - 1`` and does not arrive in ``t`` the drop is
    ``R[t - 1, m] - R[t, m]`` (positive = Dice lost). A round without arrivals breaks the chain:
    it neither makes nor ends a switch. ``{t2} -> {t2, flair}`` is a change but no drop (t2 still
    trains); ``{t2, flair} -> {flair}`` drops t2. ``modality`` keeps only the drops of that
    modality. Report their mean and max; an empty array means no switch.
    """
    R = _matrix(R)
    sets = arriving_sets(arriving, R)
    drops = []
    for t in range(2, R.shape[0]):
        before, now = sets[t - 1], sets[t]
        if not before or not now or before == now:
            continue
        drops.extend(R[t - 1, m] - R[t, m] for m in sorted(before - now) if modality in (None, m))
    return np.array(drops, dtype=np.float64)


def last_trained_round(arriving: Arriving, R: np.ndarray) -> np.ndarray:
    """Last round that trained each modality, shape ``(M,)`` int; -1 where never trained."""
    sets = arriving_sets(arriving, R)
    last = np.full(_matrix(R).shape[1], -1, dtype=np.int64)
    for t, s in enumerate(sets):
        for m in s:
            last[m] = t
    return last


def backward_transfer(R: np.ndarray, arriving: Arriving, modality: int | None = None) -> float:
    """Backward transfer (Lopez-Paz & Ranzato 2017) on the modality-indexed Dice matrix.

    For modality ``m`` with last training round ``tau_m < T``: ``BWT_m = R[T, m] - R[tau_m, m]``,
    the change of its Dice between right after it last trained and the end of the stream
    (negative = forgotten). Modalities trained in the final round or never trained have no BWT
    (as the paper's sum leaves out the last task): NaN for ``modality=m``, left out of the mean.
    ``modality=None`` gives the mean over the modalities that have one (NaN if none).
    """
    R = _matrix(R)
    last = last_trained_round(arriving, R)
    final = R.shape[0] - 1
    per_modality = np.array(
        [R[final, m] - R[tau, m] if 0 < tau < final else np.nan for m, tau in enumerate(last)]
    )
    if modality is not None:
        return float(per_modality[modality])
    return _nanmean(per_modality)


def learning_accuracy(R: np.ndarray, arriving: Arriving, modality: int | None = None) -> float:
    """Learning accuracy: mean over rounds ``t >= 1`` of the Dice of the arriving modality.

    ``modality=None``: each round with arrivals counts once, with the mean of ``R[t, m]`` over
    the modalities arriving in ``t``. ``modality=m``: mean of ``R[t, m]`` over the rounds where
    ``m`` arrives (how well ``m`` is learned right when it is trained). NaN when there is none.
    """
    R = _matrix(R)
    sets = arriving_sets(arriving, R)
    if modality is not None:
        return _nanmean(np.array([R[t, modality] for t, s in enumerate(sets) if modality in s]))
    per_round = [_nanmean(R[t, sorted(s)]) for t, s in enumerate(sets) if s]
    return _nanmean(np.array(per_round))


def area_under_curve(R: np.ndarray) -> np.ndarray:
    """Normalised area under each modality's Dice-vs-round curve, shape ``(M,)``.

    The mean of ``R[1:, m]`` over rounds ``1..T``: the area under the step curve in which round
    ``t``'s Dice holds for one round, divided by ``T``, so it lies in [0, 1] like Dice itself
    and does not grow with the stream's length. Row 0 (untrained) is left out. NaN rounds are
    skipped; NaN when ``T == 0``.
    """
    R = _matrix(R)
    return np.array([_nanmean(R[1:, m]) for m in range(R.shape[1])])


def nan_reduce(func: Any, values: np.ndarray, axis: int | None = None) -> Any:
    """``np.nanmean`` and friends without the all-NaN RuntimeWarning (the result is NaN)."""
    values = np.asarray(values, dtype=np.float64)
    if axis is None and values.size == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = func(values, axis=axis)
    return float(result) if axis is None else result
