"""Reading one case: each volume reoriented by its own affine, the pair checked on the grid."""

from __future__ import annotations

import gzip

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


# ---------------------------------------------------------------- headers that lie


def stored_nifti(path, header_changes=None, data=None):
    """A small varying 3-D image at ``path`` (1 x 1.5 x 3 mm, RAS, sform and qform set),
    its stored header bytes then changed: ``header_changes`` maps a header field to the
    values written over it (after nibabel wrote the file, so nothing repairs them)."""
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) if data is None else data
    nii = nib.Nifti1Image(data, np.diag([1.0, 1.5, 3.0, 1.0]))
    block = bytearray(nii.to_bytes())
    fields = nii.header.template_dtype.fields
    for name, values in (header_changes or {}).items():
        dtype, offset = fields[name]
        values = np.asarray(values, dtype=dtype.base).tobytes()
        block[offset : offset + len(values)] = values
    payload = bytes(block)
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize(
    ("dtype", "label"),
    [
        (np.complex64, "complex64"),
        (np.complex128, "complex128"),
        (np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]), "RGB"),
    ],
    ids=["complex64", "complex128", "rgb"],
)
def test_voxels_that_are_not_real_numbers_are_refused(tmp_path, dtype, label):
    """Casting complex voxels to float32 dropped the imaginary part with only a numpy warning."""
    real = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    if np.dtype(dtype).kind == "c":
        data = (real + 1j * real[::-1]).astype(dtype)
    else:
        data = np.zeros(real.shape, dtype)
        data["R"] = real.astype(np.uint8)
    path = tmp_path / "c_t2.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(DataError) as caught:
        load_image(path)
    assert str(caught.value) == (
        f"{path}: voxels of type {label} are not real numbers; fedll reads real-valued images "
        "and masks"
    )


BAD_SIZES = [
    pytest.param({"pixdim": [1, 0, 1.5, 3]}, "0 x 1.5 x 3 mm in its header", id="pixdim-0"),
    pytest.param({"pixdim": [1, 1, -1.5, 3]}, "1 x -1.5 x 3 mm in its header", id="negative"),
    pytest.param({"pixdim": [1, 1, 1.5, np.nan]}, "1 x 1.5 x nan mm in its header", id="nan"),
    pytest.param({"pixdim": [1, np.inf, 1.5, 3]}, "inf x 1.5 x 3 mm in its header", id="inf"),
    pytest.param(  # no sform, no qform: nibabel builds the affine from pixdim, 0 -> 1 mm
        {"pixdim": [1, 0, 0, 0], "sform_code": [0], "qform_code": [0]},
        "0 x 0 x 0 mm in its header",
        id="pixdim-0-only-source",
    ),
    pytest.param(  # pixdim fine, the sform's first column 0: a grid of no size
        {"srow_x": [0, 0, 0, 0], "qform_code": [0]},
        "0 x 1.5 x 3 mm by its affine",
        id="sform-column-0",
    ),
]


@pytest.mark.parametrize(("changes", "message"), BAD_SIZES)
@pytest.mark.parametrize("name", ["c_t2.nii", "c_t2.nii.gz"])
def test_a_voxel_size_that_is_not_positive_and_finite_is_refused(tmp_path, changes, message, name):
    """nibabel reads a pixdim of 0 as 1 mm (and a negative one as its absolute value): the
    spacing of resampling, HD95 and surface Dice would be a guess. Refused, naming the file."""
    path = stored_nifti(tmp_path / name, changes)
    with pytest.raises(DataError) as caught:
        load_image(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: voxel size {message}"), text
    assert text.endswith("is not positive and finite; fedll will not guess one"), text


def test_the_stored_voxel_size_is_the_one_read(tmp_path):
    """The untouched file of the tests above reads as written: 1 x 1.5 x 3 mm."""
    assert load_image(stored_nifti(tmp_path / "c_t2.nii.gz")).spacing == (1.0, 1.5, 3.0)


def test_every_reader_refuses_a_voxel_size_of_0(tmp_path):
    """The check is in the one reader: a cohort's header scan and a training case's read
    refuse the mask's header as they refuse the image's."""
    from fedll.data.layouts import discover

    case = tmp_path / "cohort" / "BraTS2021_00000"
    case.mkdir(parents=True)
    for stem in ("t2", "flair"):
        stored_nifti(case / f"BraTS2021_00000_{stem}.nii.gz")
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1:3, 1:3, 1:3] = 2
    mask = stored_nifti(case / "BraTS2021_00000_seg.nii.gz", {"pixdim": [1, 1, 0, 3]}, labels)
    with pytest.raises(DataError, match=f"^{mask}: voxel size 1 x 0 x 3 mm in its header"):
        discover(tmp_path / "cohort")
    record = CaseRecord("BraTS2021_00000", "t2", case / "BraTS2021_00000_t2.nii.gz", mask)
    with pytest.raises(DataError, match=f"^{mask}: voxel size 1 x 0 x 3 mm in its header"):
        load_volume(record)
