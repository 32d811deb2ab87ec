"""Evaluation of a model on test cases: Dice per case over its slices, as one volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedll.data.slices import CaseSlices
from fedll.evaluation import evaluate_cases


class Threshold(nn.Module):
    """Predicts tumour where the image is above 0.5 (logit x - 0.5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - 0.5


def case(images: np.ndarray, masks: np.ndarray) -> CaseSlices:
    return CaseSlices("p", "t2", None, images[:, None].astype(np.float32), masks[:, None])


def test_dice_is_computed_over_all_of_a_case_s_slices():
    images = np.zeros((3, 2, 2))
    images[0, 0, 0] = images[2, :, 0] = 1.0  # predicted: 3 pixels
    masks = np.zeros((3, 2, 2), np.uint8)
    masks[0, 0, :] = 1  # truth: 2 pixels, 1 of them predicted
    empty = case(np.zeros((2, 2, 2)), np.zeros((2, 2, 2), np.uint8))
    result = evaluate_cases(Threshold(), [case(images, masks), empty], batch_size=2)
    assert result.dice == pytest.approx([2 * 1 / (3 + 2), 1.0])  # both empty: 1
    assert result.attention == {}  # a static model has no attention
