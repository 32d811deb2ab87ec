"""Dice matrices of trials: ``R[t, m]`` and the modalities arriving in each round.

A trial's rows of checked results (:func:`fedll.report.read.check_results`) give its Dice
matrix ``R`` (T + 1, M) and ``arriving`` (T + 1 sets of modality indices), from which
:mod:`fedll.evaluation.metrics` computes the measures of docs/definitions.md; the matrix of another
metric (:func:`metric_values`: a result column, or one derived from ``hd95``) likewise.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from fedll.data import MODALITIES
from fedll.errors import DataError
from fedll.evaluation.metrics import detected, detected_hd95
from fedll.report.read import check_results, parse_arriving

logger = logging.getLogger(__name__)

Matrix = tuple[np.ndarray, list[frozenset[int]]]

DERIVED: dict[str, str] = {  # metric -> the result column it is read from
    "hd95": "hd95",
    "hd95_brats": "hd95",
    "detection_rate": "hd95",
}
"""The metrics read from the ``hd95`` column: ``hd95`` over the cases with a non-empty
prediction (:func:`fedll.evaluation.metrics.detected_hd95`), ``hd95_brats`` as written (BraTS: an
empty prediction counts 373.13 mm), ``detection_rate`` whether the prediction was non-empty
(:func:`fedll.evaluation.metrics.detected`: the mean over cases is the share detected)."""


def source_column(metric: str) -> str:
    """The result column ``metric`` is read from (itself, unless it is :data:`DERIVED`)."""
    return DERIVED.get(metric, metric)


def has_metric(results: pd.DataFrame, metric: str) -> bool:
    """Whether checked results hold values of ``metric`` (an earlier fedll wrote Dice only)."""
    column = source_column(metric)
    return column in results.columns and bool(results[column].notna().any())


def metric_values(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Per row of checked results, the value of ``metric``: a result column (``dice``,
    ``surface_dice``, ``personal_dice``, ...) as written, or a :data:`DERIVED` metric."""
    column = rows[source_column(metric)]
    if metric == "hd95":
        return pd.Series(detected_hd95(column.to_numpy()), index=rows.index, name=metric)
    if metric == "detection_rate":
        return pd.Series(detected(column.to_numpy()), index=rows.index, name=metric)
    return column.rename(metric)


def dice_matrix(
    trial_results: pd.DataFrame, source: str = "results", metric: str = "dice"
) -> Matrix:
    """The Dice matrix of one trial's rows (checked, as from ``check_results``): ``R`` (T + 1, M)
    and ``arriving`` (T + 1 sets); with ``metric`` (:func:`metric_values`: ``hd95``,
    ``hd95_brats``, ``detection_rate``, ``surface_dice``, ...) that metric's matrix.

    ``R[t, m]`` is the mean Dice over modality ``MODALITIES[m]``'s test cases after round ``t``
    (NaN Dice values skipped; NaN when a round or modality has no rows, or no value: for
    ``hd95``, no detected case); ``arriving[t]`` the indices of the modalities that trained in
    round ``t`` (empty for round 0 and missing rounds).
    """
    rounds = int(trial_results["round"].max())
    R = np.full((rounds + 1, len(MODALITIES)), np.nan)
    values = metric_values(trial_results, metric)
    means = values.groupby([trial_results["round"], trial_results["modality"]]).mean()
    for (t, modality), value in means.items():
        R[int(t), MODALITIES.index(modality)] = value
    arriving: list[frozenset[int]] = [frozenset() for _ in range(rounds + 1)]
    for t, value in trial_results.groupby("round")["arriving"].first().items():
        arriving[int(t)] = parse_arriving(value, source)
    if arriving[0]:
        raise DataError(f"{source}: round 0 (the untrained model) must have an empty arriving")
    missing = sorted(set(range(rounds + 1)) - set(trial_results["round"]))
    if missing:
        logger.warning(
            "trial %s has no rows for rounds %s", trial_results["trial"].iloc[0], missing
        )
    return R, arriving


def trial_matrices(results: pd.DataFrame) -> dict[str, Matrix]:
    """``dice_matrix`` of every trial, keyed by trial id (in the order of the rows)."""
    return checked_matrices(check_results(results))


def checked_matrices(results: pd.DataFrame) -> dict[str, Matrix]:
    """``trial_matrices`` of results already through :func:`check_results`."""
    return {str(t): dice_matrix(frame) for t, frame in results.groupby("trial", sort=False)}


def last_round(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of each trial's last round (a frame with ``trial`` and ``round`` columns)."""
    return frame[frame["round"] == frame.groupby("trial")["round"].transform("max")]
