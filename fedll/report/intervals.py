"""Intervals for a difference averaged over training seeds and scored on a sample of test cases.

A paired comparison (:mod:`fedll.report.compare`) has two crossed sources of sampling
variation: the **seeds** (each trains a fresh pair of models) and the **test cases** (a sample
of patients, the same ones for every seed and both arms). Its estimate is the mean over
``S`` seeds of a per-seed difference ``D_s``, each a (non-linear) function of the per-round
means over the ``n`` test cases. Read as a two-way crossed random-effects design (seeds x
cases, with a seed x case interaction), its variance is

    Var = sigma_seed^2 / S + sigma_case^2 / n + sigma_interaction^2 / (S n)

(the two-way crossed classification of Searle, Casella & McCulloch 1992, *Variance
Components*). :func:`seed_case_interval` estimates each part from mean squares:

- **seeds**: ``var(D_s) / S``, which holds the seed component and the interaction's
  share (``sigma_seed^2 / S + sigma_interaction^2 / (S n)``);
- **cases**: for a measure that is not a mean over cases, each case's contribution comes
  from the delete-one-case jackknife (Efron & Stein 1981; Efron 1982). Deleting case
  ``i`` (jointly in both arms and every seed) gives ``D_s^(-i)`` and the pseudo-value
  ``psi_si = (n - 1) (D_s - D_s^(-i))``, a (seed x case) table of the measure's sensitivity
  to each case. Its case mean square ``MS_C`` and residual (interaction) mean square ``MS_E``
  estimate ``sigma_case^2 / n`` as ``(MS_C - MS_E) / (S n)``, set to 0 where negative (the
  usual truncation of a variance component). The interaction, already in the seeds' part, is
  not counted twice. Test cases of different modalities are different patients: each
  modality is a stratum with its own jackknife, the strata's case parts add (the stratified
  jackknife, Wolter 2007, *Introduction to Variance Estimation*).

The interval is ``estimate +- t_(1+level)/2, nu * sqrt(Var)``, with ``nu`` the
Welch-Satterthwaite degrees of freedom (Satterthwaite 1946) of the sum of the seeds' part
(``S - 1`` degrees of freedom) and each modality's case part (``n - 1``): ``S - 1`` where
the seeds dominate or the case part is 0 (the t interval over seeds), about ``n - 1`` where
the shared case effects do. With one seed there is no seed part, and the interval reflects
the test cases only.

Assumptions: seeds are exchangeable draws, test cases are exchangeable draws from their
modality's population, independent of the seeds; the measure is smooth enough in the
per-round case means for the jackknife (a maximum over rounds is, where the rounds it picks
are not near-ties). Measured coverage: ``tests/report/test_intervals.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedInterval:
    """An estimate and its interval per cell (arrays of one shape): the mean over seeds,
    ``low`` and ``high``, the standard error and the degrees of freedom of the t quantile
    (NaN where the interval is undefined or has zero width)."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    se: np.ndarray
    dof: np.ndarray


def seed_case_interval(
    per_seed: np.ndarray, jackknife: Sequence[np.ndarray], level: float = 0.95
) -> PairedInterval:
    """The ``level`` interval of the mean over seeds of ``per_seed`` (S, *cells): the
    per-seed differences with all test cases. ``jackknife[k]`` (S, n_k, *cells) holds, for
    stratum ``k`` (a modality's test cases), the per-seed difference recomputed without each
    of its ``n_k`` cases (the case left out in both arms and every seed).

    Per cell, seeds whose difference is NaN are left out (as the estimate, the NaN-skipping
    mean over seeds, leaves them out); the interval is NaN where no seed is left, where one
    seed is left and no stratum has two cases, or where a jackknife value of a kept seed is
    NaN. A stratum with fewer than two cases adds nothing.
    """
    per_seed = np.asarray(per_seed, dtype=np.float64)
    shape = per_seed.shape[1:]
    flat = per_seed.reshape(per_seed.shape[0], -1)
    strata = [
        np.asarray(j, dtype=np.float64).reshape(j.shape[0], j.shape[1], -1) for j in jackknife
    ]
    for j in strata:
        if j.shape[0] != flat.shape[0] or j.shape[2] != flat.shape[1]:
            raise ValueError(f"jackknife shape {j.shape} does not match per_seed {per_seed.shape}")
    out = np.full((5, flat.shape[1]), np.nan)
    for k in range(flat.shape[1]):
        seeds = ~np.isnan(flat[:, k])
        out[:, k] = _cell(flat[seeds, k], [j[seeds, :, k] for j in strata], level)
    estimate, low, high, se, dof = (row.reshape(shape) for row in out)
    return PairedInterval(estimate, low, high, se, dof)


def _cell(d: np.ndarray, strata: list[np.ndarray], level: float) -> np.ndarray:
    """(estimate, low, high, se, dof) of one cell: ``d`` (S,) the kept seeds' differences,
    ``strata[k]`` (S, n_k) their jackknife values."""
    S = d.size
    if S == 0:
        return np.full(5, np.nan)
    estimate = float(d.mean())
    parts: list[tuple[float, float]] = []  # (a variance term, its degrees of freedom)
    if S > 1:
        parts.append((float(d.var(ddof=1)) / S, S - 1.0))
    cases = [j for j in strata if j.shape[1] > 1]
    if S == 1 and not cases:
        return np.array([estimate, np.nan, np.nan, np.nan, np.nan])
    for j in cases:
        if np.isnan(j).any():
            return np.array([estimate, np.nan, np.nan, np.nan, np.nan])
        n = j.shape[1]
        psi = (n - 1) * (d[:, None] - j)  # (S, n) pseudo-values' deviations
        by_case = psi.mean(axis=0)
        ms_case = S * float(((by_case - by_case.mean()) ** 2).sum()) / (n - 1)
        if S == 1:
            parts.append((ms_case / n, n - 1.0))
            continue
        residual = psi - psi.mean(axis=1, keepdims=True) - by_case + psi.mean()
        ms_error = float((residual**2).sum()) / ((S - 1) * (n - 1))
        if ms_case > ms_error:
            parts.append(((ms_case - ms_error) / (S * n), n - 1.0))
    variance = sum(v for v, _ in parts)
    if variance <= 0:
        return np.array([estimate, estimate, estimate, 0.0, np.nan])
    dof = variance**2 / sum(v**2 / df for v, df in parts)
    se = np.sqrt(variance)
    half = float(stats.t.ppf((1 + level) / 2, dof)) * se
    return np.array([estimate, estimate - half, estimate + half, se, dof])
