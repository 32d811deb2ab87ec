"""Per-case Dice, HD95 and surface Dice on cubes worked out by hand, and the empty cases."""

from __future__ import annotations

import numpy as np
import pytest

from fedll.evaluation.metrics import HD95_MAX_MM, case_metrics, detected, detected_hd95, dice


def cube(shift: tuple[int, int, int] = (0, 0, 0), shape: int = 20) -> np.ndarray:
    """A 5 x 5 x 5 cube at voxels 5..9 on each axis, moved by ``shift`` voxels."""
    mask = np.zeros((shape,) * 3, dtype=np.uint8)
    x, y, z = (5 + s for s in shift)
    mask[x : x + 5, y : y + 5, z : z + 5] = 1
    return mask


def test_a_cube_against_itself() -> None:
    m = case_metrics(cube(), cube(), spacing=(3.0, 1.0, 2.0))
    assert (m.dice, m.hd95, m.surface_dice) == (1.0, 0.0, 1.0)


def test_a_cube_shifted_along_an_anisotropic_axis() -> None:
    # shifted 2 voxels along x, 3 mm each: overlap 3 of 5 slabs -> Dice 2*75/(125+125) = 0.6;
    # the far faces lie 2 voxels (6 mm) from the other cube's nearest boundary, and more than
    # 5 % of each boundary is that far, so HD95 = 6 mm; every boundary voxel is within 6 mm
    m = case_metrics(cube((2, 0, 0)), cube(), spacing=(3.0, 1.0, 1.0), tolerance_mm=6.0)
    assert m.dice == pytest.approx(0.6)
    assert m.hd95 == pytest.approx(6.0)
    assert m.surface_dice == pytest.approx(1.0)
    # at 2 mm (< one 3-mm step) the displaced faces no longer count
    assert case_metrics(cube((2, 0, 0)), cube(), (3.0, 1.0, 1.0), 2.0).surface_dice < 1.0


def test_a_one_voxel_shift_along_a_two_mm_axis() -> None:
    # overlap 4 of 5 slabs -> Dice 0.8; the shifted faces are one 2-mm step apart
    m = case_metrics(cube((0, 0, 1)), cube(), spacing=(1.0, 1.0, 2.0), tolerance_mm=2.0)
    assert m.dice == pytest.approx(0.8)
    assert m.hd95 == pytest.approx(2.0)
    assert m.surface_dice == pytest.approx(1.0)
    assert m.dice == pytest.approx(dice(cube((0, 0, 1)), cube()))


def test_brats_conventions_for_empty_masks() -> None:
    empty = np.zeros((20, 20, 20), dtype=np.uint8)
    both = case_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert (both.dice, both.hd95, both.surface_dice) == (1.0, 0.0, 1.0)
    for pred, truth in ((empty, cube()), (cube(), empty)):
        one = case_metrics(pred, truth, (1.0, 1.0, 1.0))
        assert (one.dice, one.hd95, one.surface_dice) == (0.0, HD95_MAX_MM, 0.0)
    assert HD95_MAX_MM == 373.13


def test_an_empty_prediction_is_read_back_from_the_sentinel() -> None:
    empty = np.zeros((20, 20, 20), dtype=np.uint8)
    missed = case_metrics(empty, cube(), (1.0, 1.0, 1.0)).hd95
    found = case_metrics(cube((0, 0, 1)), cube(), (1.0, 1.0, 2.0)).hd95  # 2 mm
    # two voxels 373.13 mm apart: a computed HD95 of that distance is float32, not the sentinel
    far = np.zeros((2, 1, 1), dtype=np.uint8)
    near = far.copy()
    far[0], near[1] = 1, 1
    apart = case_metrics(far, near, (373.13, 1.0, 1.0)).hd95
    assert apart == pytest.approx(HD95_MAX_MM) and apart != HD95_MAX_MM
    hd95 = [missed, found, apart, float("nan")]  # NaN: results of an earlier fedll
    np.testing.assert_array_equal(detected(hd95), [0.0, 1.0, 1.0, np.nan])
    np.testing.assert_array_equal(detected_hd95(hd95), [np.nan, found, apart, np.nan])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="shape"):
        case_metrics(cube(), cube(shape=21), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="3-D"):
        case_metrics(cube()[0], cube()[0], (1.0, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        case_metrics(cube(), cube(), (1.0, 1.0, 1.0), tolerance_mm=-1.0)


@pytest.mark.parametrize("seed", range(24))
def test_every_score_is_monais_bit_for_bit(seed: int) -> None:
    # case_metrics computes the scores without MONAI's machinery (one search of the surfaces'
    # distances for both); each must equal what MONAI's compute_dice,
    # compute_hausdorff_distance and compute_surface_dice return, to the bit: on blobs of
    # random size and density, anisotropic spacings, and masks that touch the volume's faces
    # (where the one-voxel margin of the crop leaves the volume and is padded)
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
    from scipy.ndimage import binary_dilation

    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(6, 40, size=3))
    density = float(rng.uniform(0.9, 0.995))
    truth = binary_dilation(rng.random(shape) > density, iterations=int(rng.integers(1, 3)))
    pred = binary_dilation(rng.random(shape) > density, iterations=int(rng.integers(1, 3)))
    if seed % 4 == 0:  # one mask touching a face, the other a corner
        truth[0, :, : shape[2] // 2] = True
        pred[-1, -1, -1] = True
    if not truth.any() or not pred.any():
        truth[shape[0] // 2, shape[1] // 2, shape[2] // 2] = True
        pred[0, 0, 0] = True
    spacing = tuple(float(v) for v in rng.uniform(0.5, 4, size=3))
    tolerance = float(rng.uniform(0.5, 3))
    y_pred = torch.from_numpy(pred)[None, None].double()
    y = torch.from_numpy(truth)[None, None].double()
    dsc = compute_dice(y_pred, y, include_background=True)
    hd95 = compute_hausdorff_distance(y_pred, y, percentile=95, spacing=list(spacing))
    nsd = compute_surface_dice(y_pred, y, [tolerance], spacing=list(spacing))
    got = case_metrics(pred, truth, spacing, tolerance)
    assert got.dice == float(dsc.item())
    assert got.hd95 == float(hd95.item())
    assert got.surface_dice == float(nsd.item())
