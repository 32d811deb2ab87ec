"""Paired comparisons against a baseline: each measure's difference with a 95% interval over
seeds and test cases (:mod:`fedll.report.intervals`).

``fedll report RUN_DIR --compare BASELINE`` compares, within every setting (the other grid
axes equal), each value of one axis (``model`` by default) with the ``BASELINE`` value of it.
The two arms of a comparison are paired twice over: by **seed** (a trial of each arm with the
same seed shares the stream, the split and the initial draws) and by **test case** (both
arms are scored on the same cases). The estimate is the mean over the common seeds of the
per-seed difference ``measure(arm) - measure(baseline)``, each measure computed as in the
forgetting table (:func:`fedll.report.summary.matrix_measures`) from the per-round mean over
the test cases of each modality.

The interval (:func:`fedll.report.intervals.seed_case_interval`) is a t interval whose
variance adds the seeds' part (the variance of the per-seed differences over ``S``) and the
test cases' part (a delete-one-case jackknife per modality, the case left out of both arms
and every seed, less the seed x case interaction the seeds' part already holds), on
Satterthwaite degrees of freedom. Every measure is recomputed from the per-round case means
of each jackknife replicate. Its coverage, measured on simulated comparisons with a known
difference, is 0.947-0.959 for 5 and 10 seeds with seed noise, case noise or case effects
shared by the seeds (``tests/report/test_intervals.py``), where the hierarchical percentile
bootstrap this replaced covered 0.55-0.91 (0.98-0.99 with case noise alone). A difference
*counts* when its interval excludes 0 (``excludes_zero``).

Where there is no interval to speak of, ``interval_note`` says why and the difference never
counts (:func:`judge`): ``1 seed`` (one run of a chaotic trial says nothing of the seeds'
spread: no interval), ``undefined`` (the measure has no value for this stream, e.g. BWT of
the last modality), ``zero width`` (every seed and every case gives the same difference, as
when the arms are identical or differ by one constant: the interval measures no uncertainty)
and ``no interval`` (no variance could be estimated).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedll.data import MODALITIES
from fedll.errors import ConfigError
from fedll.evaluation.metrics import nan_reduce
from fedll.report.intervals import seed_case_interval
from fedll.report.matrices import dice_matrix
from fedll.report.read import check_results
from fedll.report.summary import matrix_measures, measures
from fedll.results.columns import config_columns

COMPARE_COLUMNS = ("arm", "baseline", "modality", "measure", "label")
MEAN = "mean"
"""The ``modality`` of a comparison row for the measure averaged over the modalities."""
STAT_COLUMNS = (
    "difference", "ci_low", "ci_high", "excludes_zero", "interval_note", "n_seeds", "n_cases",
)  # fmt: skip
TOLERANCE = 1e-9
"""Differences and interval widths within it are the rounding of equal values (a Dice of
0.1 + 0.2 against 0.3), not a difference: an interval must clear 0 by more to count."""
NO_INTERVAL = ("1 seed", "undefined", "no interval")
"""The :func:`judge` notes of a difference printed without an interval."""


@dataclass(frozen=True)
class ArmTrial:
    """One trial of an arm, as the interval needs it: per modality the per-case metric over
    rounds (``cases[m]``: (T + 1, n_cases), columns in ``case_ids[m]`` order; None where the
    modality was not evaluated) and the modalities arriving in each round."""

    cases: tuple[np.ndarray | None, ...]
    case_ids: tuple[tuple[str, ...], ...]
    arriving: list[frozenset[int]]


def trial_cases(frame: pd.DataFrame, metric: str = "dice") -> ArmTrial:
    """One trial's rows (checked results) as an :class:`ArmTrial` of ``metric``."""
    _, arriving = dice_matrix(frame, metric=metric)
    rounds = int(frame["round"].max())
    cases: list[np.ndarray | None] = []
    ids: list[tuple[str, ...]] = []
    for modality in MODALITIES:
        rows = frame[frame["modality"] == modality]
        if rows.empty:
            cases.append(None)
            ids.append(())
            continue
        table = rows.pivot_table(index="round", columns="case", values=metric, aggfunc="mean")
        table = table.reindex(range(rounds + 1))
        cases.append(table.to_numpy(dtype=np.float64))
        ids.append(tuple(str(c) for c in table.columns))
    return ArmTrial(tuple(cases), tuple(ids), arriving)


def _matrix(trial: ArmTrial, picks: Sequence[np.ndarray | None]) -> np.ndarray:
    """The trial's metric matrix from the test cases ``picks[m]`` (column indices) of each
    modality (all of them where ``picks[m]`` is None)."""
    columns = []
    for cases, pick in zip(trial.cases, picks, strict=True):
        if cases is None:
            columns.append(np.full(len(trial.arriving), np.nan))
            continue
        chosen = cases if pick is None else cases[:, pick]
        columns.append(nan_reduce(np.nanmean, chosen, axis=1))
    return np.stack(columns, axis=1)


def paired_difference(
    arm: Sequence[ArmTrial],
    baseline: Sequence[ArmTrial],
    metric: str = "dice",
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean over seeds of ``measures(arm) - measures(baseline)`` and its ``level``
    interval over seeds and test cases (:func:`fedll.report.intervals.seed_case_interval`);
    ``arm[s]`` and ``baseline[s]`` are the trials of seed ``s`` (the same test cases, in the
    same order). Returns (estimate, low, high), each (n_measures, M + 1): a column per
    modality, then the difference of the modality-averaged measure (the mean over the
    modalities that have it, its jackknife deleting each case of every modality: one interval
    for "averaged over T2 and FLAIR"). With one seed there is no interval: low and high are
    NaN."""
    if len(arm) != len(baseline) or not arm:
        raise ValueError("paired_difference needs the same, non-zero number of seeds per arm")
    for a, b in zip(arm, baseline, strict=True):
        if a.case_ids != b.case_ids:
            raise ValueError("the paired trials were not scored on the same test cases")
    whole = [None] * len(MODALITIES)

    def difference(s: int, picks) -> np.ndarray:
        a, b = arm[s], baseline[s]
        per_modality = matrix_measures(_matrix(a, picks), a.arriving, metric) - matrix_measures(
            _matrix(b, picks), b.arriving, metric
        )
        both = nan_reduce(np.nanmean, per_modality, axis=1)[:, None]
        return np.concatenate([per_modality, both], axis=1)

    def without(m: int, case: int) -> list[np.ndarray | None]:
        kept = np.delete(np.arange(len(arm[0].case_ids[m])), case)
        return [kept if k == m else None for k in range(len(MODALITIES))]

    seeds = range(len(arm))
    per_seed = np.stack([difference(s, whole) for s in seeds])
    if len(arm) < 2:  # one chaotic run: nothing is known of the seeds' spread
        estimate = nan_reduce(np.nanmean, per_seed, 0)
        return estimate, np.full_like(estimate, np.nan), np.full_like(estimate, np.nan)
    jackknife = [
        np.stack([np.stack([difference(s, without(m, i)) for i in range(len(ids))]) for s in seeds])
        for m, ids in enumerate(arm[0].case_ids)
        if ids
    ]
    interval = seed_case_interval(per_seed, jackknife, level)
    return interval.estimate, interval.low, interval.high


def judge(difference: float, low: float, high: float, n_seeds: int) -> tuple[bool, str]:
    """Whether the difference counts (its interval excludes 0 by more than
    :data:`TOLERANCE`) and, where there is no interval to judge by, why not (the module's
    notes; "" for a proper interval): then it never counts."""
    if not np.isfinite(difference):
        return False, "undefined"
    if n_seeds < 2:
        return False, "1 seed"
    if not (np.isfinite(low) and np.isfinite(high)):
        return False, "no interval"
    if high - low <= TOLERANCE:
        return False, "zero width"
    return bool(low > TOLERANCE or high < -TOLERANCE), ""


def compare(
    results: pd.DataFrame,
    baseline: str,
    axis: str = "model",
    metric: str = "dice",
    level: float = 0.95,
) -> pd.DataFrame:
    """For every setting (the configuration columns but ``axis``) and every value of ``axis``
    other than ``baseline``: each measure's paired difference from the baseline per modality,
    with its interval (:func:`paired_difference`) over the seeds both arms have.

    ConfigError (one line) when ``axis`` is not a grid axis of the results or ``baseline``
    not one of its values. Columns: the setting's, then :data:`COMPARE_COLUMNS` and
    :data:`STAT_COLUMNS`.
    """
    results = check_results(results)
    keys = config_columns(results)
    if axis not in keys:
        raise ConfigError(f"--compare-axis: {axis!r} is not a grid axis (axes: {keys})")
    values = [str(v) for v in results[axis].astype(str).unique()]
    if baseline not in values:
        raise ConfigError(f"--compare: {baseline!r} is not a {axis} of the run ({values})")
    setting = [k for k in keys if k != axis]
    names = measures(metric)
    rows = []
    frame = results.assign(**{axis: results[axis].astype(str)})
    by_trial = {t: trial_cases(f, metric) for t, f in frame.groupby("trial", sort=False)}
    for key, group in (
        frame.groupby(setting, sort=False, dropna=False) if setting else [((), frame)]
    ):
        key = key if isinstance(key, tuple) else (key,)
        seeds = {v: dict(zip(g["seed"], g["trial"], strict=True))
                 for v, g in group.drop_duplicates("trial").groupby(axis)}  # fmt: skip
        if baseline not in seeds:
            continue
        for value in (v for v in values if v != baseline and v in seeds):
            common = sorted(set(seeds[value]) & set(seeds[baseline]))
            if not common:
                continue
            arm = [by_trial[seeds[value][s]] for s in common]
            base = [by_trial[seeds[baseline][s]] for s in common]
            estimate, low, high = paired_difference(arm, base, metric, level)
            evaluated = [arm[0].cases[m] is not None for m in range(len(MODALITIES))]
            columns = [(m, x) for m, x in enumerate(MODALITIES) if evaluated[m]]
            if sum(evaluated) > 1:
                columns.append((len(MODALITIES), MEAN))
            for m, modality in columns:
                for i, (name, label) in enumerate(names.items()):
                    counts, note = judge(estimate[i, m], low[i, m], high[i, m], len(common))
                    rows.append(
                        {
                            **dict(zip(setting, key, strict=True)),
                            "arm": value,
                            "baseline": baseline,
                            "modality": modality,
                            "measure": name,
                            "label": label,
                            "difference": estimate[i, m],
                            "ci_low": low[i, m],
                            "ci_high": high[i, m],
                            "excludes_zero": counts,
                            "interval_note": note,
                            "n_seeds": len(common),
                            "n_cases": sum(len(ids) for ids in arm[0].case_ids)
                            if modality == MEAN
                            else len(arm[0].case_ids[m]),
                        }
                    )
    return pd.DataFrame(rows, columns=[*setting, *COMPARE_COLUMNS, *STAT_COLUMNS])


def format_cell(row: pd.Series, digits: int = 3) -> str:
    """One comparison row for reading: ``difference [low, high]`` with a ``*`` where the
    interval excludes 0; where there is none, why: ``+0.100 [n/a: 1 seed]``,
    ``n/a (undefined)``, ``+0.100 [+0.100, +0.100] (zero width)``."""
    note = row.get("interval_note", "")
    note = note if isinstance(note, str) else ""  # a table read back: "" became NaN
    if note == "undefined":
        return "n/a (undefined)"
    difference = f"{row['difference']:+.{digits}f}"
    if note in NO_INTERVAL:
        return f"{difference} [n/a: {note}]"
    interval = f"{difference} [{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]"
    return f"{interval} ({note})" if note else interval + ("*" if row["excludes_zero"] else "")


def format_comparison(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The comparison for reading (:func:`format_cell`), one row per setting x arm x
    modality, one column per measure label."""
    if table.empty:
        return table
    cell = table.apply(format_cell, axis=1, digits=digits)
    index = [c for c in table.columns if c not in (*COMPARE_COLUMNS[3:], *STAT_COLUMNS)]
    wide = table.assign(cell=cell, n_seeds=table["n_seeds"]).pivot_table(
        index=[*index, "n_seeds"], columns="label", values="cell", aggfunc="first", sort=False
    )
    order = [label for label in dict.fromkeys(table["label"]) if label in wide.columns]
    return wide[order].reset_index()
