"""Paired comparisons against a baseline: each measure's difference with a 95% interval from a
hierarchical bootstrap over seeds and test cases.

``fedll report RUN_DIR --compare BASELINE`` compares, within every setting (the other grid
axes equal), each value of one axis (``model`` by default) with the ``BASELINE`` value of it.
The two arms of a comparison are paired twice over: by **seed** (a trial of each arm with the
same seed shares the stream, the split and the initial draws) and by **test case** (both
arms are scored on the same cases). The estimate is the mean over the common seeds of the
per-seed difference ``measure(arm) - measure(baseline)``, each measure computed as in the
forgetting table (:func:`fedll.report.summary.matrix_measures`) from the per-round mean over
the test cases of each modality.

The interval is a percentile bootstrap that resamples both levels of that design, as a
two-stage (hierarchical) bootstrap does (Davison & Hinkley 1997, section 3.8; Saravanan et
al. 2020 for its use with nested data): in each of ``n_boot`` replicates the seeds are drawn
with replacement, and for each drawn seed the test cases of each modality are drawn with
replacement, the same draw for both arms; the per-modality Dice matrices of both arms are
rebuilt from the drawn cases, every measure recomputed, and the differences averaged over the
drawn seeds. A difference *counts* when its interval excludes 0 (``excludes_zero``).

Where there is no interval to speak of, ``interval_note`` says why and the difference never
counts (:func:`judge`): ``1 seed`` (the seed level cannot be resampled: no interval),
``undefined`` (the measure has no value for this stream, e.g. BWT of the last modality),
``zero width`` (every replicate gives the same difference: the resampling has nothing to
vary, as when the arms are identical or differ by one constant, so it measures no
uncertainty) and ``no interval`` (no replicate has a value).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedll.columns import config_columns
from fedll.data import MODALITIES
from fedll.errors import ConfigError
from fedll.metrics import nan_reduce
from fedll.report.matrices import dice_matrix
from fedll.report.read import check_results
from fedll.report.summary import matrix_measures, measures

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
    """One trial of an arm, as the bootstrap needs it: per modality the per-case metric over
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
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean over seeds of ``measures(arm) - measures(baseline)`` and its ``level``
    percentile interval from the hierarchical bootstrap; ``arm[s]`` and ``baseline[s]`` are
    the trials of seed ``s`` (the same test cases, in the same order). Returns
    (estimate, low, high), each (n_measures, M + 1): a column per modality, then the
    difference of the modality-averaged measure (the mean over the modalities that have it,
    resampled with them: one interval for "averaged over T2 and FLAIR"). With one seed the
    seed level has nothing to resample: low and high are NaN (no bootstrap is run)."""
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

    estimate = nan_reduce(np.nanmean, np.stack([difference(s, whole) for s in range(len(arm))]), 0)
    if len(arm) < 2:
        return estimate, np.full_like(estimate, np.nan), np.full_like(estimate, np.nan)
    rng = np.random.default_rng(seed)
    replicates = []
    for _ in range(n_boot):
        drawn = []
        for s in rng.integers(len(arm), size=len(arm)):
            picks = [
                None if ids == () else rng.integers(len(ids), size=len(ids))
                for ids in arm[s].case_ids
            ]
            drawn.append(difference(int(s), picks))
        replicates.append(nan_reduce(np.nanmean, np.stack(drawn), 0))
    tail = (1 - level) / 2 * 100
    stacked = np.stack(replicates)
    low = nan_reduce(lambda v, axis: np.nanpercentile(v, tail, axis=axis), stacked, 0)
    high = nan_reduce(lambda v, axis: np.nanpercentile(v, 100 - tail, axis=axis), stacked, 0)
    return estimate, low, high


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
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
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
            estimate, low, high = paired_difference(arm, base, metric, n_boot, level, seed)
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
