"""Per-case segmentation metrics of binary masks, in 3-D with the voxel spacing (MONAI inside).

:func:`case_metrics` gives one case's Dice, 95th-percentile Hausdorff distance (HD95, mm) and
surface Dice at a tolerance (Nikolov et al. 2021), computed by MONAI's
``compute_dice``, ``compute_hausdorff_distance(percentile=95)`` and ``compute_surface_dice``
on the whole (X, Y, Z) volume with its spacing (the last two from one search of the surfaces'
distances, as each of them would find it). As MONAI defines them, a surface is the
mask's boundary voxels, distances are Euclidean in mm, and HD95 is symmetric: the larger of
the two directed 95th percentiles.

Empty masks follow the BraTS challenge conventions (which MONAI leaves undefined, NaN or inf):

- truth and prediction both empty: Dice 1, HD95 0 mm, surface Dice 1;
- exactly one empty: Dice 0, HD95 :data:`HD95_MAX_MM` (373.13 mm, the diagonal of the
  240 x 240 x 155 1-mm BraTS grid, the value the BraTS evaluation assigns), surface Dice 0.

A test case's truth is never empty (:func:`fedll.data.prepare.prepare_cohort` refuses one
whose tumour does not survive slicing), so a written ``hd95`` of exactly :data:`HD95_MAX_MM`
means an empty prediction: a computed HD95 is a float32 distance, which cannot equal the
float64 373.13. :func:`detected` and :func:`detected_hd95` read that back from the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HD95_MAX_MM = 373.13
"""HD95 of a case where exactly one of truth and prediction is empty (BraTS's value)."""
SURFACE_TOLERANCE_MM = 2.0
"""The default tolerance of surface Dice."""


@dataclass(frozen=True)
class CaseMetrics:
    """One case's Dice, HD95 (mm) and surface Dice (at the tolerance it was computed with)."""

    dice: float
    hd95: float
    surface_dice: float


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks of the same shape (any dimensionality), voxel-counted.

    Both empty gives 1.0; an empty truth with a non-empty prediction gives 0.0 (as does a
    non-empty truth with an empty prediction).
    """
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"dice: prediction shape {pred.shape} != truth shape {truth.shape}")
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def dice_per_case(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> np.ndarray:
    """Dice of each (prediction, truth) pair: ``(N,)`` float64."""
    if len(preds) != len(truths):
        raise ValueError(f"dice_per_case: {len(preds)} predictions for {len(truths)} truths")
    return np.array([dice(p, t) for p, t in zip(preds, truths, strict=True)], dtype=np.float64)


def case_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = SURFACE_TOLERANCE_MM,
) -> CaseMetrics:
    """Dice, HD95 (mm) and surface Dice at ``tolerance_mm`` of one case.

    pred, truth: binary (X, Y, Z) masks (any values; nonzero is foreground); spacing: the
    voxel size in mm along each axis. Empty masks follow the BraTS conventions of the module
    docstring.
    """
    pred = np.asarray(pred).astype(bool)
    truth = np.asarray(truth).astype(bool)
    if pred.shape != truth.shape:
        raise ValueError(f"case_metrics: prediction shape {pred.shape} != truth {truth.shape}")
    if pred.ndim != 3 or len(spacing) != 3:
        raise ValueError(f"case_metrics: needs 3-D masks and 3 spacings, got {pred.shape}")
    if tolerance_mm < 0:
        raise ValueError(f"case_metrics: tolerance_mm must be >= 0, got {tolerance_mm}")
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return CaseMetrics(dice=1.0, hd95=0.0, surface_dice=1.0)
    if has_pred != has_truth:
        return CaseMetrics(dice=0.0, hd95=HD95_MAX_MM, surface_dice=0.0)
    # imported here: the report reads this package and stays free of torch
    import torch

    voxel = [float(s) for s in spacing]
    pred_edges, truth_edges = surface_voxels(*union_crop(pred, truth))
    pred_to_truth = torch.from_numpy(surface_distances(pred_edges, truth_edges, voxel))
    truth_to_pred = torch.from_numpy(surface_distances(truth_edges, pred_edges, voxel))
    # the scores as compute_hausdorff_distance and compute_surface_dice derive them
    hd95 = torch.max(torch.stack([torch.quantile(pred_to_truth, 0.95),
                                  torch.quantile(truth_to_pred, 0.95)]))  # fmt: skip
    correct = torch.sum(pred_to_truth <= tolerance_mm) + torch.sum(truth_to_pred <= tolerance_mm)
    nsd = torch.empty((), dtype=torch.float)
    nsd.fill_(correct / (len(pred_to_truth) + len(truth_to_pred)))
    # compute_dice returns float32: (2 |P & T|) / (|P| + |T|) of exact voxel counts, rounded
    # to float32 (the float64 quotient rounded to float32 is the correctly rounded float32
    # quotient: 53 >= 2 * 24 + 2 bits, so rounding twice cannot differ)
    dsc = float(np.float32(dice(pred, truth)))
    return CaseMetrics(dice=dsc, hd95=float(hd95.item()), surface_dice=float(nsd))


def union_crop(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to the bounding box of their union with a margin of one voxel,
    zero-padded where the margin leaves the volume (MONAI's ``CropForeground(margin=1,
    allow_smaller=False)`` in ``get_mask_edges``). The union must not be empty."""
    union = pred | truth
    starts, stops = [], []
    for axis in range(union.ndim):
        hits = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        starts.append(int(hits[0]) - 1)
        stops.append(int(hits[-1]) + 2)
    shape = tuple(stop - start for start, stop in zip(starts, stops, strict=True))
    source = tuple(
        slice(max(start, 0), min(stop, size))
        for start, stop, size in zip(starts, stops, union.shape, strict=True)
    )
    target = tuple(
        slice(max(start, 0) - start, min(stop, size) - start)
        for start, stop, size in zip(starts, stops, union.shape, strict=True)
    )
    cropped = []
    for mask in (pred, truth):
        box = np.zeros(shape, dtype=bool)
        box[target] = mask[source]
        cropped.append(box)
    return cropped[0], cropped[1]


def surface_voxels(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each mask's boundary voxels: the mask minus its binary erosion (scipy's, the cross
    structuring element, outside counted as background), as ``get_mask_edges`` finds them."""
    from scipy.ndimage import binary_erosion

    return binary_erosion(pred) ^ pred, binary_erosion(truth) ^ truth


def surface_distances(
    source: np.ndarray, target: np.ndarray, spacing: Sequence[float]
) -> np.ndarray:
    """The distance (mm, float32) from each ``source`` surface voxel, in C order, to the
    nearest ``target`` surface voxel: scipy's exact Euclidean distance transform (float64)
    cast to float32, as MONAI's ``get_surface_distance``; infinite where ``target`` has none."""
    from scipy.ndimage import distance_transform_edt

    if not target.any():
        return np.full(int(source.sum()), np.inf, dtype=np.float32)
    distances = distance_transform_edt(~target, sampling=list(spacing))
    return distances.astype(np.float32)[source]


def detected(hd95: np.ndarray) -> np.ndarray:
    """Per case, from its HD95 as :func:`case_metrics` gives it (the ``hd95`` of result rows):
    1.0 where the prediction was non-empty, 0.0 where it was empty (HD95 exactly
    :data:`HD95_MAX_MM`; the truth of a test case is never empty), NaN where no HD95 was
    computed (NaN: results of an earlier fedll). Float, so that a mean is the detection rate."""
    hd95 = np.asarray(hd95, dtype=np.float64)
    return np.where(np.isnan(hd95), np.nan, (hd95 != HD95_MAX_MM).astype(np.float64))


def detected_hd95(hd95: np.ndarray) -> np.ndarray:
    """Per case, HD95 where the prediction was non-empty and NaN where it was empty (the
    :data:`HD95_MAX_MM` of the BraTS convention): means that skip NaN are over detected
    cases."""
    hd95 = np.asarray(hd95, dtype=np.float64)
    return np.where(hd95 == HD95_MAX_MM, np.nan, hd95)
