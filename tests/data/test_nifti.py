"""Reading one case: each volume reoriented by its own affine, the pair checked on the grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from fedll.data.nifti import CaseRecord, load_volume


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
