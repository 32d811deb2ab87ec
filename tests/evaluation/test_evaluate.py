"""Evaluation of a model on test cases: Dice per case over its slices, as one volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedll.data.slices import CaseSlices
from fedll.evaluation.evaluate import evaluate_cases


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


def test_hd95_and_surface_dice_in_3d_with_the_slice_positions_and_spacing():
    # truth: pixel (0, 0) of slice 2; prediction: pixel (0, 0) of slices 2 and 6. The slices
    # are at indices 2 and 6 (3 and 4, 5 between them, not selected) 2 mm apart, so the
    # false positive lies 4 x 2 = 8 mm from the truth. Predicted-to-truth distances are
    # {0, 8} mm, whose 95th percentile (linear, as numpy's) is 0.95 x 8 = 7.6 mm; truth-to-
    # prediction {0}: HD95 = 7.6 mm. Dice 2/3; 2 of the 3 surface voxels are within 2 mm of
    # the other surface -> surface Dice 2/3
    images = np.zeros((2, 4, 4), np.float32)
    images[:, 0, 0] = 1.0
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, 0, 0] = 1
    gapped = CaseSlices(
        "p", "t2", None, images[:, None], masks[:, None], np.array([2, 6]), (2.0, 1.0, 1.0)
    )
    result = evaluate_cases(Threshold(), [gapped], tolerance_mm=2.0)
    assert result.dice == pytest.approx([2 / 3])
    assert result.hd95 == pytest.approx([7.6])
    assert result.surface_dice == pytest.approx([2 / 3])


def _trained_cases() -> tuple[nn.Module, list[CaseSlices]]:
    """A tiny U-Net trained until it segments the bright blobs, and two test cases."""
    from fedll.config import TrainingConfig
    from fedll.models import build_model
    from fedll.training.train import train_local

    rng = np.random.default_rng(0)
    images = rng.normal(size=(24, 1, 24, 24)).astype(np.float32)
    images[:, :, 6:14, 8:16] += 2.0
    masks = (images > 1.0).astype(np.uint8)
    torch.manual_seed(0)
    model = build_model("static", base_width=4, depth=2)
    cfg = TrainingConfig(epochs=8, batch_size=8, lr=0.02, precision="fp32")
    train_local(model, images, masks, cfg, seed=0)
    cases = [
        CaseSlices(f"p{i}", "t2", None, images[i * 12 : (i + 1) * 12], masks[i * 12 : (i + 1) * 12])
        for i in range(2)
    ]
    return model, cases


def test_bf16_evaluation_agrees_with_fp32_and_leaves_the_model_as_it_was():
    model, cases = _trained_cases()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    exact = evaluate_cases(model, cases, precision="fp32")
    assert min(exact.dice) > 0.5  # the model segments: the agreement is not of empty masks
    fast = evaluate_cases(model, cases, precision="bf16")
    assert fast.dice == pytest.approx(exact.dice, abs=0.02)
    assert fast.hd95 == pytest.approx(exact.hd95, abs=1.5)
    after = model.state_dict()
    assert all(v.is_contiguous() and torch.equal(v, state[k]) for k, v in after.items())
    # fp32 is the arithmetic fedll always had: batch size and layout change nothing
    assert evaluate_cases(model, cases, batch_size=5, precision="fp32").dice == exact.dice
