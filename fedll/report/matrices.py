"""Dice matrices of trials: ``R[t, m]`` and the modalities arriving in each round.

A trial's rows of checked results (:func:`fedll.report.read.check_results`) give its Dice
matrix ``R`` (T + 1, M) and ``arriving`` (T + 1 sets of modality indices), from which
:mod:`fedll.metrics` computes the measures of DESIGN.md "Definitions".
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from fedll.data import MODALITIES
from fedll.errors import DataError
from fedll.report.read import check_results, parse_arriving

logger = logging.getLogger(__name__)

Matrix = tuple[np.ndarray, list[frozenset[int]]]


def dice_matrix(
    trial_results: pd.DataFrame, source: str = "results", metric: str = "dice"
) -> Matrix:
    """The Dice matrix of one trial's rows (checked, as from ``check_results``): ``R`` (T + 1, M)
    and ``arriving`` (T + 1 sets); with ``metric`` (a column of
    :data:`fedll.columns.METRIC_COLUMNS`: ``hd95``, ``surface_dice``) that metric's matrix.

    ``R[t, m]`` is the mean Dice over modality ``MODALITIES[m]``'s test cases after round ``t``
    (NaN Dice values skipped; NaN when a round or modality has no rows); ``arriving[t]`` the
    indices of the modalities that trained in round ``t`` (empty for round 0 and missing rounds).
    """
    rounds = int(trial_results["round"].max())
    R = np.full((rounds + 1, len(MODALITIES)), np.nan)
    means = trial_results.groupby(["round", "modality"])[metric].mean()
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
