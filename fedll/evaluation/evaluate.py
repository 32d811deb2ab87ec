"""Evaluation of a model on test cases: Dice, HD95 and surface Dice per case, and attention.

:func:`evaluate_cases` scores each case as one volume: the whole-tumour prediction of its
evaluated slices, each at its slice index (:meth:`fedll.data.slices.CaseSlices.volume`),
against the truth, in 3-D with the stack's spacing (:func:`fedll.evaluation.metrics.case_metrics`).
:func:`evaluate_round` evaluates the global model on each modality's test set after a round
and adds the rows to a trial's :class:`~fedll.results.rows.TrialResults` (the federation and the
joint bound share it); :func:`evaluate_personal`, before it, the personalised models (Ditto)
that changed in the round, each on its site's modality test set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedll.config.schema import EvaluationConfig
from fedll.data import MODALITIES
from fedll.data.slices import CaseSlices
from fedll.evaluation.metrics import SURFACE_TOLERANCE_MM, case_metrics
from fedll.evaluation.metrics.routing import chance, decoding_accuracy
from fedll.models.inspection import last_attention, routes_by_modality
from fedll.results.rows import PREVIEW_CASES, TrialResults
from fedll.run.device import Precision, autocast, channels_last, resolve_precision
from fedll.training.train import accumulate_attention, model_device

FAST_BATCH = 128
"""Slices per forward pass in bf16 or fp16 (oneDNN's reduced-precision kernels gain from
larger batches; benchmarks/bench_arithmetic.py times evaluation in that form against fp32)."""


@dataclass(frozen=True)
class Evaluation:
    """Per-case Dice, HD95 (mm) and surface Dice and, for dynamic models, the mean attention
    per layer."""

    dice: list[float]
    hd95: list[float] = field(default_factory=list)
    surface_dice: list[float] = field(default_factory=list)
    attention: dict[str, np.ndarray] = field(default_factory=dict)
    slice_attention: dict[str, np.ndarray] = field(default_factory=dict)
    """With ``collect_attention``: per dynamic layer, every evaluated slice's attention,
    (N, K) or, grouped, (N, C_out * G) float32, in the order of the cases' slices."""
    previews: list[tuple[int, np.ndarray]] = field(default_factory=list)
    """Of the first ``previews`` cases: the index (in the case's slices) of the slice with
    the most tumour and its prediction (S, S) bool."""


def evaluate_cases(
    model: nn.Module,
    cases: Sequence[CaseSlices],
    batch_size: int | None = None,
    collect_attention: bool = False,
    tolerance_mm: float = SURFACE_TOLERANCE_MM,
    previews: int = 0,
    precision: Precision = "fp32",
) -> Evaluation:
    """Dice, HD95 and surface Dice (at ``tolerance_mm``) per case, over the case's evaluated
    slices as one volume.

    The model runs where its parameters are, in inference mode (no autograd bookkeeping; the
    same kernels, so the same predictions as under ``no_grad``), under ``precision``'s
    autocast (:func:`fedll.run.device.resolve_precision`); in bf16 or fp16 with its convolutions
    laid out channels-last, in batches of :data:`FAST_BATCH` slices (fp32: 32, as fedll always
    ran it; the batch size does not change a slice's prediction). ``cases``
    hold ``images`` (N, 1, H, W), ``masks`` (N, 1, H, W), their slice ``indices`` and ``spacing``
    (:class:`fedll.data.slices.CaseSlices`). With ``collect_attention``, also the mean
    attention per dynamic layer over all evaluated slices. With ``previews`` = k, also the
    prediction of the largest-tumour slice of each of the first k cases. A model that routes
    by modality is given each case's ``modality`` (the test set's label).
    """
    device = model_device(model)
    resolved = resolve_precision(precision, device)
    if batch_size is None:
        batch_size = 32 if resolved == "fp32" else FAST_BATCH
    layout = channels_last(model, enabled=resolved != "fp32")
    with layout, torch.inference_mode(), autocast(device, resolved):
        return _evaluate(model, cases, batch_size, collect_attention, tolerance_mm, previews)


def _evaluate(
    model: nn.Module,
    cases: Sequence[CaseSlices],
    batch_size: int,
    collect_attention: bool,
    tolerance_mm: float,
    previews: int,
) -> Evaluation:
    model.eval()
    device = model_device(model)
    routed = routes_by_modality(model)
    dice, hd95, surface = [], [], []
    kept: list[tuple[int, np.ndarray]] = []
    mass: dict[str, np.ndarray] = {}
    per_slice: dict[str, list[np.ndarray]] = {}
    slices = 0
    for case in cases:
        preds = []
        for start in range(0, len(case.images), batch_size):
            # a copy: cached slices are read-only memory maps
            chunk = torch.tensor(case.images[start : start + batch_size], dtype=torch.float32)
            if routed:
                modality = torch.full((len(chunk),), MODALITIES.index(case.modality))
                logits = model(chunk.to(device), modality.to(device))
            else:
                logits = model(chunk.to(device))
            preds.append((logits > 0).cpu().numpy())
            if collect_attention:
                attention = last_attention(model)
                accumulate_attention(mass, attention)
                for name, att in attention.items():
                    flat = att.float().reshape(len(att), -1).cpu().numpy()
                    per_slice.setdefault(name, []).append(flat)
        slices += len(case.images)
        predicted = np.concatenate(preds).astype(np.uint8)
        if len(kept) < previews:
            largest = int(np.asarray(case.masks).reshape(len(case.masks), -1).sum(axis=1).argmax())
            kept.append((largest, predicted[largest, 0] > 0))
        pred = case.volume(predicted)
        truth = case.volume(np.asarray(case.masks) > 0)
        scores = case_metrics(pred, truth, case.spacing, tolerance_mm)
        dice.append(scores.dice)
        hd95.append(scores.hd95)
        surface.append(scores.surface_dice)
    attention = {name: m / max(slices, 1) for name, m in mass.items()}
    stacked = {name: np.concatenate(parts) for name, parts in per_slice.items()}
    return Evaluation(dice, hd95, surface, attention, stacked, kept)


def evaluate_personal(
    results: TrialResults,
    model: nn.Module,
    personal: Mapping[str, Mapping[str, torch.Tensor]],
    modality_of: Mapping[str, str],
    test: Mapping[str, Sequence[CaseSlices]],
    evaluation: EvaluationConfig | None = None,
) -> None:
    """Evaluate each site's new personalised model (``personal``: site -> state dict) on the
    test cases of its modality (``modality_of``), loaded into ``model`` (a scratch model of
    the trial's architecture, where it should run), and keep the scores in ``results``
    (:meth:`~fedll.results.rows.TrialResults.set_personal`) for the rows :func:`evaluate_round`
    adds next. A site whose modality has no test cases is skipped."""
    evaluation = evaluation or EvaluationConfig()
    for site, state in personal.items():
        modality = modality_of[site]
        if not test.get(modality):
            continue
        model.load_state_dict(state)
        ev = evaluate_cases(
            model,
            test[modality],
            tolerance_mm=evaluation.surface_tolerance_mm,
            precision=evaluation.precision,
        )
        results.set_personal(
            site, modality, {"dice": ev.dice, "hd95": ev.hd95, "surface_dice": ev.surface_dice}
        )


def evaluate_round(
    results: TrialResults,
    server_round: int,
    model: nn.Module,
    test: Mapping[str, Sequence[CaseSlices]],
    evaluation: EvaluationConfig | None = None,
) -> None:
    """Evaluate ``model`` on each modality's test cases; add the rows of ``server_round``,
    and, for a dynamic model, per layer how well the per-slice attention decodes the
    slices' modality (:func:`~fedll.evaluation.metrics.routing.decoding_accuracy`, over every
    modality's test slices: :meth:`~fedll.results.rows.TrialResults.add_routing`).

    evaluation: the scenario's section (the surface-Dice tolerance; which slices the test
    cases hold was decided when they were prepared, and is written on every row)."""
    evaluation = evaluation or EvaluationConfig()
    routing: dict[str, list[tuple[str, np.ndarray]]] = {}
    for modality, cases in test.items():
        ev = evaluate_cases(
            model,
            cases,
            collect_attention=True,
            tolerance_mm=evaluation.surface_tolerance_mm,
            previews=PREVIEW_CASES,
            precision=evaluation.precision,
        )
        for case, (index, pred) in zip(cases, ev.previews, strict=False):
            results.add_previews(
                server_round,
                modality,
                case.patient,
                np.asarray(case.images[index, 0]),
                np.asarray(case.masks[index, 0]) > 0,
                pred,
            )
        results.add_round(
            server_round,
            modality,
            [c.patient for c in cases],
            ev.dice,
            ev.attention,
            hd95=ev.hd95,
            surface_dice=ev.surface_dice,
            evaluation=evaluation,
        )
        for layer, attention in ev.slice_attention.items():
            routing.setdefault(layer, []).append((modality, attention))
    for layer, parts in routing.items():
        labels = np.concatenate([np.full(len(a), MODALITIES.index(m)) for m, a in parts])
        features = np.concatenate([a for _, a in parts])
        results.add_routing(
            server_round, layer, len(labels), decoding_accuracy(features, labels), chance(labels)
        )
