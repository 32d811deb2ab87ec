"""Metrics: per-case segmentation metrics and the lifelong-learning measures.

- :mod:`~fedll.evaluation.metrics.segmentation`: Dice, HD95 and surface Dice of one case (MONAI
  inside);
- :mod:`~fedll.evaluation.metrics.lifelong`: forgetting, BWT and friends of a per-round metric
  matrix.
"""

from __future__ import annotations

from fedll.evaluation.metrics.lifelong import (
    Arriving,
    area_under_curve,
    arriving_sets,
    backward_transfer,
    final_dice,
    forgetting,
    last_trained_round,
    learning_accuracy,
    nan_reduce,
    switch_drops,
)
from fedll.evaluation.metrics.segmentation import (
    HD95_MAX_MM,
    SURFACE_TOLERANCE_MM,
    CaseMetrics,
    case_metrics,
    detected,
    detected_hd95,
    dice,
    dice_per_case,
)

__all__ = [
    "HD95_MAX_MM",
    "SURFACE_TOLERANCE_MM",
    "Arriving",
    "CaseMetrics",
    "area_under_curve",
    "arriving_sets",
    "backward_transfer",
    "case_metrics",
    "detected",
    "detected_hd95",
    "dice",
    "dice_per_case",
    "final_dice",
    "forgetting",
    "last_trained_round",
    "learning_accuracy",
    "nan_reduce",
    "switch_drops",
]
