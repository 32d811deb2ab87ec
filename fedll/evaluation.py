"""Evaluation of a model on test cases: Dice per case, and the attention its inputs got.

:func:`evaluate_cases` scores each case as one volume (whole tumour over the case's
evaluated slices); :func:`evaluate_round` evaluates the global model on each modality's test
set after a round and adds the rows to a trial's :class:`~fedll.results.TrialResults` (the
federation and the joint bound share it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedll.data.slices import CaseSlices
from fedll.metrics import dice
from fedll.models.inspection import last_attention
from fedll.results import TrialResults
from fedll.train import accumulate_attention, model_device


@dataclass(frozen=True)
class Evaluation:
    """Per-case Dice and, for dynamic models, the mean attention per layer."""

    dice: list[float]
    attention: dict[str, np.ndarray] = field(default_factory=dict)


@torch.no_grad()
def evaluate_cases(
    model: nn.Module,
    cases: Sequence[Any],
    batch_size: int = 32,
    collect_attention: bool = False,
) -> Evaluation:
    """Dice per case (whole tumour over the case's evaluated slices, as one volume).

    The model runs where its parameters are (fp32). ``cases`` hold ``images`` (N, 1, H, W)
    and ``masks`` (N, 1, H, W), e.g. :class:`fedll.data.slices.CaseSlices`. With
    ``collect_attention``, also the mean attention per dynamic layer over all evaluated
    slices.
    """
    model.eval()
    device = model_device(model)
    scores: list[float] = []
    mass: dict[str, np.ndarray] = {}
    slices = 0
    for case in cases:
        preds = []
        for start in range(0, len(case.images), batch_size):
            # a copy: cached slices are read-only memory maps
            chunk = torch.tensor(case.images[start : start + batch_size], dtype=torch.float32)
            preds.append((model(chunk.to(device)) > 0).cpu().numpy())
            if collect_attention:
                accumulate_attention(mass, last_attention(model))
        slices += len(case.images)
        scores.append(dice(np.concatenate(preds), np.asarray(case.masks) > 0))
    attention = {name: m / max(slices, 1) for name, m in mass.items()}
    return Evaluation(dice=scores, attention=attention)


def evaluate_round(
    results: TrialResults,
    server_round: int,
    model: nn.Module,
    test: Mapping[str, Sequence[CaseSlices]],
) -> None:
    """Evaluate ``model`` on each modality's test cases; add the rows of ``server_round``."""
    for modality, cases in test.items():
        ev = evaluate_cases(model, cases, collect_attention=True)
        results.add_round(server_round, modality, [c.patient for c in cases], ev.dice, ev.attention)
