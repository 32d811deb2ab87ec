from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from pydantic import ValidationError

from fedll.config import SliceConfig
from fedll.data.nifti import Volume
from fedll.data.slices import (
    CaseSlices,
    brain_mask,
    model_inputs,
    normalise,
    preprocess,
    resize,
    resized_spacing,
    select_slices,
    slice_indices,
    square_padding,
    unresize,
)
from fedll.errors import DataError

Phantom = Callable[..., tuple[np.ndarray, np.ndarray]]


def _volume(make_phantom: Phantom, shape=(16, 16, 10), spacing=(1.0, 1.0, 1.0)) -> Volume:
    image, labels = make_phantom(0, shape)
    return Volume(image, labels, spacing)


def test_shapes_dtypes_and_binary_masks(make_phantom: Phantom) -> None:
    volume = _volume(make_phantom)
    images, masks, *_ = preprocess(volume, SliceConfig(size=16, empty_fraction=0.0))
    tumour_slices = int((volume.labels > 0).any(axis=(0, 1)).sum())
    assert images.shape == masks.shape == (tumour_slices, 1, 16, 16)
    assert images.dtype == np.float32 and masks.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1}  # labels 1, 2 and 4 all became 1
    assert masks.reshape(tumour_slices, -1).any(axis=1).all()  # every kept slice has tumour


def test_indices_and_spacing_of_the_stack(make_phantom: Phantom) -> None:
    # 16 x 12 pixels of 1 x 2 mm: the field of view is 24 mm square, padded to 24 x 12
    # pixels, so at size 16 a pixel is 24/16 = 1.5 mm both ways; 3 mm between slices
    volume = _volume(make_phantom, shape=(16, 12, 10), spacing=(1.0, 2.0, 3.0))
    images, masks, indices, spacing = preprocess(volume, SliceConfig(size=16, empty_fraction=0))
    tumour = np.flatnonzero((volume.labels > 0).any(axis=(0, 1)))
    np.testing.assert_array_equal(indices, tumour)
    assert spacing == (3.0, 1.5, 1.5)
    assert resized_spacing((16, 12), (1.0, 2.0), 16) == (1.5, 1.5)
    every, _, all_indices, _ = preprocess(volume, SliceConfig(size=16), every_slice=True)
    brain = (brain_mask(volume.image) | (volume.labels > 0)).any(axis=(0, 1))
    np.testing.assert_array_equal(all_indices, np.flatnonzero(brain))
    assert len(every) == brain.sum() > len(images)


def test_volume_places_slices_at_their_indices() -> None:
    masks = np.ones((3, 1, 2, 2), dtype=np.uint8) * np.arange(1, 4)[:, None, None, None]
    case = CaseSlices("p", "t2", None, masks.astype(np.float32), masks, np.array([4, 5, 8]))
    stacked = case.volume(masks)
    assert stacked.shape == (5, 2, 2)  # slices 4..8
    assert stacked[:, 0, 0].tolist() == [1, 2, 0, 0, 3]  # 6 and 7 were not selected: empty
    plain = CaseSlices("p", "t2", None, masks.astype(np.float32), masks)
    assert plain.indices.tolist() == [0, 1, 2] and plain.spacing == (1.0, 1.0, 1.0)
    with pytest.raises(DataError, match="2 slice indices for 3 slices"):
        CaseSlices("p", "t2", None, masks.astype(np.float32), masks, np.array([0, 1]))


def test_tumour_free_slices_need_enough_brain(make_phantom: Phantom) -> None:
    volume = _volume(make_phantom)
    image = volume.image.copy()
    image[:, :, 8:] = 0
    image[8, 8, 8] = 100.0  # slice 8 holds one brain voxel, slice 9 none
    spec = SliceConfig(size=16, empty_fraction=5.0)  # the most the schema allows
    images, *_ = preprocess(Volume(image, volume.labels, volume.spacing), spec)
    brain_pixels = (images != images.min()).reshape(len(images), -1).sum(axis=1)
    # the one tumour slice and 5 of the 6 tumour-free ones among slices 1..7; never 0, 8, 9
    assert brain_pixels.min() > 10 and len(images) == 6


def test_identity_resize_gives_the_normalised_slices(make_phantom: Phantom) -> None:
    volume = _volume(make_phantom)
    images, masks, *_ = preprocess(volume, SliceConfig(size=16, empty_fraction=0.0))
    keep = np.flatnonzero((volume.labels > 0).any(axis=(0, 1)))
    brain = brain_mask(volume.image) | (volume.labels > 0)
    expected = normalise(volume.image, brain)[:, :, keep]
    np.testing.assert_allclose(images[:, 0], np.moveaxis(expected, 2, 0), atol=1e-5)
    np.testing.assert_array_equal(masks[:, 0], np.moveaxis(volume.labels[:, :, keep] > 0, 2, 0))


def test_normalisation_inside_brain(make_phantom: Phantom) -> None:
    head, _ = make_phantom(1, (24, 24, 20))
    rng = np.random.default_rng(0)
    uniform = rng.uniform(200, 300, head.shape)  # z stays within +-1.8: no clipping
    image = np.where(head > 0, uniform, 0).astype(np.float32)
    brain = brain_mask(image)
    np.testing.assert_array_equal(brain, image > 0)  # background is exactly 0 here
    z = normalise(image, brain)
    assert abs(z[brain].mean()) < 1e-5 and abs(z[brain].std() - 1) < 1e-5
    values = image[brain].astype(np.float64)
    background = max(-values.mean() / values.std(), -5.0)  # one constant, clipped
    np.testing.assert_allclose(z[~brain], background, rtol=1e-5)
    # a Rician noise floor (sigma 3 % of the tissue level) stays (almost all) out of the brain
    noise = np.abs(rng.normal(0, 7.5, head.shape) + 1j * rng.normal(0, 7.5, head.shape))
    noisy = brain_mask(image + noise * ~brain)
    assert np.all(noisy[brain]) and noisy[~brain].mean() < 0.005
    image[tuple(np.argwhere(brain)[0])] = 1e6
    assert normalise(image, brain).max() == pytest.approx(5.0)  # an extreme voxel is clipped


def test_empty_share_respected_and_seeded() -> None:
    tumour = np.zeros(40, bool)
    tumour[10:14] = True
    brain = np.zeros(40, bool)
    brain[2:38] = True
    for fraction, empty in ((0.0, 0), (0.5, 2), (1.0, 4), (2.5, 10), (5.0, 20)):
        keep = select_slices(tumour, brain, SliceConfig(empty_fraction=fraction))
        assert set(range(10, 14)) <= set(keep.tolist())
        assert len(keep) == 4 + empty and np.all(brain[keep]) and np.all(np.diff(keep) > 0)
    spec = SliceConfig(empty_fraction=1.0, seed=3)
    first = select_slices(tumour, brain, spec)
    np.testing.assert_array_equal(first, select_slices(tumour, brain, spec))
    others = [
        select_slices(tumour, brain, SliceConfig(empty_fraction=1.0, seed=s)) for s in range(8)
    ]
    assert any(not np.array_equal(first, other) for other in others)


def test_padding_keeps_the_physical_aspect() -> None:
    stack = np.ones((1, 10, 20), np.float32)
    square = resize(stack, (1.0, 1.0), 20, mode="nearest-exact")[0]
    assert square[:5].sum() == 0 and square[15:].sum() == 0 and np.all(square[5:15] == 1)
    anisotropic = resize(stack, (2.0, 1.0), 20, mode="nearest-exact")[0]  # 20 mm x 20 mm
    assert np.all(anisotropic == 1)
    assert resize(stack[:0], (1.0, 1.0), 8, mode="bilinear").shape == (0, 8, 8)


@pytest.mark.parametrize(
    ("shape", "spacing", "padding"),
    [
        ((10, 20), (1.0, 1.0), ((5, 5), (0, 0))),
        ((10, 20), (2.0, 1.0), ((0, 0), (0, 0))),  # 20 mm x 20 mm already
        ((9, 6), (1.0, 1.0), ((0, 0), (1, 2))),  # odd padding: one more after
        ((12, 40), (3.0, 0.5), ((0, 0), (16, 16))),  # 36 mm x 20 mm
    ],
)
def test_square_padding_worked_out_by_hand(shape, spacing, padding) -> None:
    assert square_padding(shape, spacing) == padding


@pytest.mark.parametrize(
    ("shape", "spacing", "size"),
    [((40, 40), (1.0, 1.0), 40), ((48, 56), (1.0, 1.0), 32), ((30, 44), (2.0, 0.8), 64)],
)
def test_unresize_inverts_resize(shape, spacing, size) -> None:
    """A smooth field (a broad Gaussian) resized and resized back is itself up to the
    interpolation error (away from the edge, where the padding mixes in); the identity size
    gives it back exactly; a disc keeps its place."""
    a, b = np.meshgrid(
        np.arange(shape[0]) * spacing[0], np.arange(shape[1]) * spacing[1], indexing="ij"
    )
    centre = (0.4 * shape[0] * spacing[0], 0.6 * shape[1] * spacing[1])
    field = np.exp(-((a - centre[0]) ** 2 + (b - centre[1]) ** 2) / (2 * 8.0**2))
    stack = field[None].astype(np.float32)
    back = unresize(resize(stack, spacing, size, mode="bilinear"), shape, spacing)
    assert back.shape == (1, *shape) and back.dtype == np.float32
    tolerance = 1e-6 if size == shape[0] == shape[1] else 0.02
    assert np.abs(back - stack)[:, 2:-2, 2:-2].max() < tolerance
    disc = (np.hypot(a - centre[0], b - centre[1]) < 6.0).astype(np.float32)[None]
    logits = resize(2 * disc - 1, spacing, size, mode="bilinear")
    restored = unresize(logits, shape, spacing) > 0
    assert (restored != (disc > 0)).mean() < 0.02


def test_model_inputs_of_the_kept_slices_are_preprocess_s(make_phantom: Phantom) -> None:
    """fedll segment makes every slice with model_inputs; the slices preprocess keeps are
    those of the same call, bit for bit."""
    volume = _volume(make_phantom, shape=(16, 20, 10), spacing=(1.0, 1.5, 2.5))
    for axis in (0, 1, 2):
        spec = SliceConfig(size=24, axis=axis, empty_fraction=0.5)
        images, *_ = preprocess(volume, spec)
        keep = slice_indices(volume, spec)
        brain = brain_mask(volume.image) | (volume.labels > 0)
        every = model_inputs(normalise(volume.image, brain), volume.spacing, spec)
        assert every.shape == (volume.image.shape[axis], 1, 24, 24)
        np.testing.assert_array_equal(every[keep], images)


def test_spec_validation() -> None:
    for bad in ({"size": 0}, {"empty_fraction": -0.1}, {"axis": 3}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            SliceConfig(**bad)
