"""Reading one case: each volume reoriented by its own affine, the pair checked on the grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from fedll.data.nifti import CaseRecord, from_canonical, load_image, load_volume
from fedll.errors import DataError


def test_an_lps_image_with_an_ras_mask_stays_aligned(tmp_path):
    """The same world grid stored two ways: the image flipped in x and y (LPS), the mask
    not (RAS). The tumour's mean intensity must be the tumour's, not the background's."""
    shape = (12, 10, 6)
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    ras[:3, 3] = (-5.5, -4.5, -2.5)
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 1:4, 1:5] = 2  # a tumour in one corner (RAS voxel order)
    image = np.full(shape, 100.0, np.float32)
    image[labels > 0] = 900.0  # bright tumour
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = (shape[0] - 1, shape[1] - 1, 0)
    lps_affine = ras @ flip  # voxel (i, j, k) of the LPS array is (X-1-i, Y-1-j, k) in RAS
    lps_image = image[::-1, ::-1, :].copy()
    nib.save(nib.Nifti1Image(lps_image, lps_affine), tmp_path / "c_t2.nii.gz")
    nib.save(nib.Nifti1Image(labels, ras), tmp_path / "c_seg.nii.gz")
    record = CaseRecord("c", "t2", tmp_path / "c_t2.nii.gz", tmp_path / "c_seg.nii.gz")
    volume = load_volume(record)
    assert volume.image[volume.labels > 0].mean() == 900.0
    assert volume.image[volume.labels == 0].mean() == 100.0
    np.testing.assert_array_equal(volume.labels, labels)  # both in RAS+ now


# ---------------------------------------------------------------- back to the file's grid


def affine_of(codes: str, spacing: tuple[float, float, float]) -> np.ndarray:
    """An affine whose voxel axes point along ``codes`` (e.g. "LPS", "SRA") with ``spacing``."""
    directions = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for axis, code in enumerate(codes):
        world, sign = directions[code]
        affine[world, axis] = sign * spacing[axis]
    affine[:3, 3] = (-40.0, 12.5, 7.0)
    return affine


@pytest.mark.parametrize("codes", ["RAS", "LPS", "LAS", "PSL", "SRA", "IPR", "ALI"])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 1.25, 4.0)])
def test_from_canonical_undoes_the_reorientation(tmp_path, codes, spacing):
    """A file stored in any axis order and direction, with anisotropic voxels: the canonical
    image load_image gives is RAS+, and from_canonical brings it back voxel for voxel."""
    shape = (7, 5, 3)
    stored = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1.0
    affine = affine_of(codes, spacing)
    path = tmp_path / "c_t2.nii.gz"
    nib.save(nib.Nifti1Image(stored, affine), path)
    image = load_image(path)
    assert nib.aff2axcodes(affine) == tuple(codes)
    assert image.shape == shape
    np.testing.assert_array_equal(image.affine, affine)
    # the canonical grid: each RAS+ axis has the spacing of the stored axis along it
    order = ["RLAPSI".index(c) // 2 for c in codes]
    assert image.spacing == pytest.approx([spacing[order.index(w)] for w in range(3)])
    assert image.data.shape == tuple(shape[order.index(w)] for w in range(3))
    np.testing.assert_array_equal(from_canonical(image.data, affine), stored)
    # and it is the world grid: the first canonical voxel is the most right-posterior-inferior
    world = affine @ np.array([*np.argwhere(stored == image.data[0, 0, 0])[0], 1.0])
    corners = [affine @ np.array([i, j, k, 1.0]) for i in (0, 6) for j in (0, 4) for k in (0, 2)]
    assert np.allclose(world[:3], np.min(corners, axis=0)[:3])


def test_from_canonical_of_an_oblique_affine(tmp_path):
    """A rotated grid (not axis aligned): io_orientation picks the closest axes; the round
    trip still gives the stored array back."""
    angle = np.deg2rad(25.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.array([[0, 0, -2.0], [0, 1.5, 0], [3.0, 0, 0]])
    stored = np.random.default_rng(0).random((4, 6, 5)).astype(np.float32)
    path = tmp_path / "c_flair.nii"
    nib.save(nib.Nifti1Image(stored, affine), path)
    image = load_image(path)
    np.testing.assert_array_equal(from_canonical(image.data, affine), stored)


def test_load_image_refuses_a_4d_image_without_a_channel(tmp_path):
    path = tmp_path / "c_t2.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 2), np.float32), np.eye(4)), path)
    with pytest.raises(DataError, match=f"{path}: expected a 3-D volume"):
        load_image(path)
    data = np.stack([np.ones((4, 4, 4)), np.arange(64.0).reshape(4, 4, 4)], axis=-1)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), path)
    np.testing.assert_array_equal(load_image(path, channel=1).data, data[..., 1])
