"""Per-trial measures and the forgetting tables: mean, std and count over the seeds of a
configuration (:func:`seed_interval` turns them into a 95 % interval).

:func:`trial_summary` computes every measure of :data:`MEASURES` per trial and evaluated
modality from its Dice matrix, or (``metric``) from its HD95 or surface-Dice matrix with the
measures of :func:`measures`; :func:`summarise` (and :func:`forgetting_table`, both steps)
aggregates them over the seeds of each configuration (:data:`fedll.results.columns.CONFIG_COLUMNS`).
Where the results have the per-round ``failed`` and ``rejected`` columns, the table also
counts them per configuration (summed over seeds). Where they have personalised models'
Dice (Ditto's ``personal_dice``), the Dice summary and table add :data:`PERSONAL_MEASURES`
(results without any keep their columns as they were).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedll.data import MODALITIES
from fedll.evaluation.metrics import (
    area_under_curve,
    backward_transfer,
    forgetting,
    learning_accuracy,
    nan_reduce,
    switch_drops,
)
from fedll.report.matrices import dice_matrix
from fedll.report.read import COUNTS, check_results
from fedll.results.columns import config_columns

logger = logging.getLogger(__name__)

MEASURES: dict[str, str] = {  # column -> label in the formatted table
    "final_dice": "final Dice",
    "forgetting_final": "forgetting (final)",
    "forgetting_max": "forgetting (max)",
    "switch_drop_mean": "switch drop (mean)",
    "switch_drop_max": "switch drop (max)",
    "bwt": "BWT",
    "learning_accuracy": "learning acc.",
    "auc": "AUC",
    "mean_final_dice": "mean final Dice",
}

PRIVACY = "final_epsilon"
"""The summaries' column of the ε a trial spent (only where some trial has an accountant)."""
PERSONAL_MEASURES: dict[str, str] = {  # of the personalised models' Dice matrix (Ditto)
    "final_personal_dice": "final personal Dice",
    "personal_forgetting_max": "personal forgetting (max)",
}

METRICS: dict[str, tuple[str, bool]] = {  # metric -> (label, higher is better)
    "dice": ("Dice", True),
    "hd95": ("HD95 (mm)", False),
    "detection_rate": ("detection rate", True),
    "hd95_brats": ("BraTS HD95 (mm)", False),
    "surface_dice": ("surface Dice", True),
}
"""The metrics with a forgetting table: result columns, and those read from ``hd95``
(:data:`fedll.report.matrices.DERIVED`): ``hd95`` over the detected cases (a non-empty
prediction), the ``detection_rate`` beside it, and ``hd95_brats``, BraTS's convention that
counts a missed case at 373.13 mm."""


def measures(metric: str = "dice") -> dict[str, str]:
    """The summary's measure columns of ``metric`` -> their labels: :data:`MEASURES` for Dice;
    for the others the same measures, the level ones (final, learning accuracy, AUC, mean
    final) named after the metric (``final_hd95``)."""
    if metric == "dice":
        return MEASURES
    label = METRICS[metric][0]
    out = {}
    for column, text in MEASURES.items():
        if column.endswith("_dice"):
            column, text = column.removesuffix("_dice") + f"_{metric}", text.replace("Dice", label)
        out[column] = text
    return out


def has_personal(results: pd.DataFrame) -> bool:
    """Whether ``results`` hold any personalised model's Dice (a Ditto trial)."""
    return "personal_dice" in results.columns and bool(results["personal_dice"].notna().any())


def table_measures(frame: pd.DataFrame, metric: str = "dice") -> dict[str, str]:
    """``measures(metric)`` and, for Dice, those of :data:`PERSONAL_MEASURES` that ``frame``
    (a trial summary, or a table with ``<measure>_mean`` columns) has."""
    out = dict(measures(metric))
    if metric == "dice":
        columns = set(frame.columns)
        out |= {k: v for k, v in PERSONAL_MEASURES.items() if {k, f"{k}_mean"} & columns}
    return out


def trial_summary(results: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """One row per trial x evaluated modality with every measure of ``measures(metric)``.

    For Dice and surface Dice (higher is better) the measures are those of
    ``fedll.evaluation.metrics`` on the metric's matrix. For HD95 (lower is better) the forgetting
    measures are computed on the negated matrix, so the signs keep their meaning: forgetting and
    switch drops are the *rise* of HD95 in mm (positive = worse, as a Dice loss is), BWT is minus
    the rise since the modality last trained (negative = forgotten); the level measures (final,
    learning accuracy, AUC, mean final) stay in mm. ``hd95`` is the mean over the cases with a
    non-empty prediction (NaN in a round without one), ``detection_rate`` the share of such cases,
    ``hd95_brats`` the mean with a missed case at 373.13 mm
    (:func:`fedll.report.matrices.metric_values`).

    Per modality ``m``: ``final_dice`` R[T, m]; ``forgetting_final`` / ``forgetting_max`` the
    last and the largest entry of ``forgetting(R)[:, m]``; ``switch_drop_mean`` / ``_max`` over
    the drops of ``m`` at switches (NaN without any); ``bwt`` and ``learning_accuracy`` as in
    ``fedll.evaluation.metrics`` for modality ``m``; ``auc`` the mean Dice over rounds 1..T. The
    trial's ``mean_final_dice`` (mean over modalities), where the results have them its counts of
    failed sites and rejected updates over all rounds (``COUNTS``) and, where some trial kept
    a privacy accountant, its ``final_epsilon`` (NaN for the others) are repeated on each of
    its rows. For Dice, where any trial has personalised models (:func:`has_personal`), every
    row also has ``final_personal_dice`` (P[T, m] of the personalised models' matrix P) and
    ``personal_forgetting_max`` (the largest entry of ``forgetting(P)[:, m]``; rounds before
    a site of ``m`` has a personalised model are NaN in P and skipped); NaN for trials without.
    """
    results = check_results(results)
    names = list(measures(metric))
    keys = config_columns(results)
    evaluated = [m for m in MODALITIES if m in set(results["modality"])]
    counted = {c: n for c, n in COUNTS.items() if c in results.columns}
    private = bool(results["epsilon"].notna().any())
    personal = metric == "dice" and has_personal(results)
    rows = []
    for trial, frame in results.groupby("trial", sort=False):
        R, arriving = dice_matrix(frame, metric=metric)
        values = matrix_measures(R, arriving, metric)
        counts = {n: round_events(frame, c) for c, n in counted.items()}
        if private:
            counts[PRIVACY] = final_epsilon(frame)
        if personal:
            P, _ = dice_matrix(frame, metric="personal_dice")
            PF = forgetting(P)
        first = frame.iloc[0]
        for modality in evaluated:
            m = MODALITIES.index(modality)
            rows.append(
                {
                    "trial": trial,
                    **{k: first[k] for k in keys},
                    "seed": first["seed"],
                    "modality": modality,
                    "rounds": R.shape[0] - 1,
                    **dict(zip(names, values[:, m].tolist(), strict=True)),
                    **(
                        {
                            "final_personal_dice": P[-1, m],
                            "personal_forgetting_max": nan_reduce(np.nanmax, PF[:, m]),
                        }
                        if personal
                        else {}
                    ),
                    **counts,
                }
            )
    return _sorted(pd.DataFrame(rows), [*keys, "seed"])


def matrix_measures(
    R: np.ndarray, arriving: Sequence[frozenset[int]], metric: str = "dice"
) -> np.ndarray:
    """Every measure of ``measures(metric)`` of one trial's metric matrix, shape
    (n_measures, M), in that order (see :func:`trial_summary`; ``mean_final`` is the mean over
    the evaluated modalities, those with a value, on every modality's row)."""
    sign = 1.0 if METRICS[metric][1] else -1.0
    oriented = sign * R
    F = forgetting(oriented)
    auc = area_under_curve(R)
    evaluated = ~np.all(np.isnan(R), axis=0)
    mean_final = nan_reduce(np.nanmean, R[-1, evaluated]) if evaluated.any() else np.nan
    out = np.full((len(measures(metric)), R.shape[1]), np.nan)
    for m in range(R.shape[1]):
        drops = switch_drops(oriented, arriving, modality=m)
        out[:, m] = (
            R[-1, m],
            F[-1, m],
            nan_reduce(np.nanmax, F[:, m]),
            nan_reduce(np.nanmean, drops),
            nan_reduce(np.nanmax, drops),
            backward_transfer(oriented, arriving, modality=m),
            learning_accuracy(R, arriving, modality=m),
            auc[m],
            mean_final,
        )
    return out


def final_epsilon(trial_results: pd.DataFrame) -> float:
    """The ε one trial had spent after its last round (NaN without an accountant)."""
    last = trial_results.loc[trial_results["round"] == trial_results["round"].max(), "epsilon"]
    return float(last.max()) if last.notna().any() else float("nan")


def round_events(trial_results: pd.DataFrame, column: str) -> int:
    """How many sites one trial's ``column`` (``failed`` or ``rejected``) names over its rounds
    (each round's rows repeat the same ";"-joined names)."""
    per_round = trial_results.groupby("round")[column].first()
    return sum(len([s for s in str(v).split(";") if s.strip()]) for v in per_round)


def forgetting_table(results: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Per configuration x modality: ``n_seeds`` and ``<measure>_mean`` / ``<measure>_std``,
    and the ``COUNTS`` columns summed over seeds where the results have them.

    Means skip NaN (a seed without switches adds no switch drop); std is the sample standard
    deviation over seeds (ddof=1, NaN for a single seed).
    """
    return summarise(trial_summary(results, metric), metric)


def seed_interval(mean: float, std: float, n: int) -> tuple[float, float]:
    """The 95 % interval of a mean over ``n`` seeds: ``mean ± t(0.975, n - 1) std / sqrt(n)``
    (Student's t; the seeds' values taken as independent draws of the configuration's
    result). NaN where fewer than two seeds have a value."""
    from scipy.stats import t

    if n < 2 or np.isnan(mean) or np.isnan(std):
        return np.nan, np.nan
    half = float(t.ppf(0.975, n - 1)) * std / np.sqrt(n)
    return mean - half, mean + half


def summarise(summary: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Aggregate a ``trial_summary`` of ``metric`` over the seeds of each configuration x
    modality."""
    keys = [*config_columns(summary), "modality"]
    groups = summary.groupby(keys, sort=False, dropna=False)
    names = list(table_measures(summary, metric))
    parts = [
        groups["trial"].nunique().rename("n_seeds"),
        groups[names].mean().add_suffix("_mean"),
        groups[names].std(ddof=1).add_suffix("_std"),
        groups[names].count().add_suffix("_n"),
    ]
    counts = [n for n in COUNTS.values() if n in summary.columns]
    if counts:
        parts.append(groups[counts].sum())
    privacy = [PRIVACY] if PRIVACY in summary.columns else []
    if privacy:  # the same for every seed (it depends on the noise and the rounds); the worst
        parts.append(groups[privacy].max())
    table = pd.concat(parts, axis=1).reset_index()
    repeated = groups["seed"].nunique() < table.set_index(keys)["n_seeds"]
    if repeated.any():
        logger.warning("configurations with repeated seeds: %s", list(repeated[repeated].index))
    stats = [f"{m}_{s}" for m in names for s in ("mean", "std", "n")]
    return _sorted(table[[*keys, "n_seeds", *stats, *counts, *privacy]], keys[:-1])


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    order = frame["modality"].map({m: i for i, m in enumerate(MODALITIES)})
    frame = frame.assign(_modality=order).sort_values([*keys, "_modality"], kind="stable")
    return frame.drop(columns="_modality").reset_index(drop=True)
