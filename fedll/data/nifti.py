"""Reading and validating one case: a NIfTI image and its mask, reoriented to RAS+.

:func:`load_volume` checks what headers can tell (:func:`check_headers`: 3-D, or 4-D with the
channel, image and mask grids equal after reorientation) and the voxels: truncated data,
NaN/inf, an empty (constant) image, non-integer or unexpected label values. Every problem
raises :class:`~fedll.errors.DataError` with one line that starts with the file.

Every file is opened by one reader (:func:`_open`), whatever reads it (a cohort's scan, a
training case, ``fedll segment``), and it refuses two headers that would otherwise give wrong
numbers without a word: voxels that are not real numbers (complex, RGB: casting them to
float drops a part of each value) and a voxel size that is not positive and finite. nibabel
reads a ``pixdim`` of 0 as 1 mm and a negative one as its absolute value; the spacing feeds
the in-plane resampling and HD95 and surface Dice in mm, so it must come from the file, never
from a substitute. The stored ``pixdim`` is read before nibabel repairs it.

Labels keep their stored values, validated against the convention of the file's dataset
(:func:`label_convention`), with one exception: in BraTS 2024 GLI, label 4 is the resection
cavity, which is not tumour, so it becomes 0 (background). Rejecting it instead would lose
every post-operative 2024 case, and whole tumour is label > 0 in every other convention.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations
from nibabel.openers import ImageOpener

from fedll.errors import DataError

logger = logging.getLogger(__name__)

AFFINE_ATOL_MM = 1e-3  # image and mask affines may differ by float rounding, not by a voxel
LABEL_ROUND_ATOL = 1e-3  # float masks are rounded to integers when this close to them
REAL_KINDS = "iuf"  # numpy dtype kinds of real voxels: NIfTI's integers and floats


@dataclass(frozen=True)
class CaseRecord:
    """One patient x modality: an image file and its mask; ``channel`` selects a 4-D channel."""

    patient: str
    modality: str
    image: Path
    mask: Path
    site: str | None = None
    split: str | None = None
    channel: int | None = None


@dataclass(frozen=True, eq=False)
class Volume:
    """A validated volume in canonical RAS+ orientation.

    image: float32 (X, Y, Z), scl_slope/scl_inter applied. labels: uint8 (X, Y, Z), the stored
    label values (BraTS 2024 resection cavity mapped to 0). spacing: voxel size in mm (X, Y, Z).
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class CanonicalImage:
    """A validated image in canonical RAS+ orientation, with the grid of its file.

    data: float32 (X, Y, Z) in RAS+, scl_slope/scl_inter applied. spacing: voxel size in mm
    (X, Y, Z of ``data``). shape and affine: the file's spatial shape and affine, to map an
    array on ``data``'s grid back (:func:`from_canonical`).
    """

    data: np.ndarray
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    affine: np.ndarray


@dataclass(frozen=True)
class LabelConvention:
    """The label values a dataset may store, and those that are not tumour (mapped to 0)."""

    name: str
    allowed: frozenset[int]
    not_tumour: frozenset[int] = frozenset()


BRATS2017 = LabelConvention(
    "BraTS 2017-2021 (0, 1 NCR/NET, 2 oedema, 4 ET)", frozenset({0, 1, 2, 4})
)
BRATS_GLI = LabelConvention(
    "BraTS 2023/2024 GLI (0, 1 NCR, 2 oedema, 3 ET, 4 resection cavity -> 0)",
    frozenset({0, 1, 2, 3, 4}),
    not_tumour=frozenset({4}),
)
MSD_BRAIN = LabelConvention(
    "MSD Task01 (0, 1 oedema, 2 non-enhancing, 3 enhancing)", frozenset({0, 1, 2, 3})
)
GENERIC = LabelConvention("generic (0 background, 1-4 tumour)", frozenset({0, 1, 2, 3, 4}))

_GLI_MASK = re.compile(r"^BraTS-GLI-.*-seg$", re.IGNORECASE)
_BRATS2017_MASK = re.compile(r".*(_seg|_GlistrBoost|_GlistrBoost_ManuallyCorrected)$", re.I)


def label_convention(record: CaseRecord) -> LabelConvention:
    """The label convention of a record, told by its mask's file name (or its MSD channel)."""
    if record.channel is not None:
        return MSD_BRAIN
    stem = nifti_stem(record.mask.name) or record.mask.name
    if _GLI_MASK.match(stem):
        return BRATS_GLI
    if _BRATS2017_MASK.match(stem):
        return BRATS2017
    return GENERIC


def load_volume(record: CaseRecord) -> Volume:
    """Read, validate and reorient one record (see the module docstring for the checks)."""
    image_nii = _open(record.image)
    mask_nii = _open(record.mask)
    _check_pair(record, image_nii, mask_nii)
    image = _canonical_image(record.image, image_nii, record.channel)
    raw_labels = _read(record.mask, mask_nii, None)
    labels = _validate_labels(record.mask, raw_labels, label_convention(record))
    # each volume by its own affine: an image stored LPS with its mask stored RAS (one world
    # grid, checked by _check_pair) must not flip the mask
    mask_ornt = orientations.io_orientation(mask_nii.affine)
    return Volume(
        image=image.data,
        labels=np.ascontiguousarray(orientations.apply_orientation(labels, mask_ornt)),
        spacing=image.spacing,
    )


def load_image(path: Path, channel: int | None = None) -> CanonicalImage:
    """Read, validate and reorient one image without a mask (3-D, or a 4-D one's
    ``channel``): the checks of :func:`load_volume` that concern the image."""
    path = Path(path)
    nii = _open(path)
    _spatial_shape(path, nii.shape, channel)
    return _canonical_image(path, nii, channel)


def _canonical_image(path: Path, nii: nib.Nifti1Image, channel: int | None) -> CanonicalImage:
    image = np.asarray(_read(path, nii, channel), dtype=np.float32)
    if not np.isfinite(image).all():
        non_finite = int(image.size - np.count_nonzero(np.isfinite(image)))
        raise DataError(f"{path}: {non_finite} voxel(s) are NaN or infinite")
    low, high = float(image.min()), float(image.max())
    if low == high:
        raise DataError(f"{path}: image is constant ({low:g}): no brain")
    ornt = orientations.io_orientation(nii.affine)
    canonical_affine = nii.affine @ orientations.inv_ornt_aff(ornt, image.shape)
    sx, sy, sz = (float(s) for s in np.linalg.norm(canonical_affine[:3, :3], axis=0))
    return CanonicalImage(
        data=np.ascontiguousarray(orientations.apply_orientation(image, ornt)),
        spacing=(sx, sy, sz),
        shape=image.shape,
        affine=np.asarray(nii.affine, dtype=np.float64),
    )


def from_canonical(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The inverse of the reorientation to RAS+ that :func:`load_volume` applies: ``data``
    (X, Y, Z, on the canonical grid of a file whose affine is ``affine``) on that file's own
    voxel grid, so that ``from_canonical(apply_orientation(a, io_orientation(affine)),
    affine)`` is ``a``."""
    ornt = orientations.io_orientation(affine)
    identity = orientations.axcodes2ornt(("R", "A", "S"))
    back = orientations.ornt_transform(identity, ornt)
    return np.ascontiguousarray(orientations.apply_orientation(data, back))


def _read(path: Path, nii: nib.Nifti1Image, channel: int | None) -> np.ndarray:
    """The scaled voxels of a 3-D image, or of one channel of a 4-D one: (X, Y, Z)."""
    try:
        data = np.asanyarray(nii.dataobj) if channel is None else nii.dataobj[..., channel]
    except Exception as exc:  # zlib, EOF and size errors all mean the same to the user
        raise DataError(f"{path}: cannot read voxel data, truncated? ({one_line(exc)})") from exc
    return data.reshape(data.shape[:3])


def _validate_labels(path: Path, raw: np.ndarray, convention: LabelConvention) -> np.ndarray:
    """Integer labels in the convention's set as uint8 (X, Y, Z); non-tumour labels set to 0."""
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all():
            raise DataError(f"{path}: mask has NaN or infinite values")
        rounded = np.rint(raw)
        error = float(np.abs(raw - rounded).max())
        if error > LABEL_ROUND_ATOL:
            raise DataError(f"{path}: mask values are not integers (off by up to {error:.3g})")
        raw = rounded
    elif raw.dtype.kind not in "iub":
        raise DataError(f"{path}: mask has non-numeric type {raw.dtype}")
    low, high = raw.min(), raw.max()
    if low < 0 or high > 255:
        raise DataError(f"{path}: mask values {low:g}..{high:g} are outside 0..255")
    labels = raw.astype(np.uint8)
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
    if unexpected := sorted(set(present.tolist()) - convention.allowed):
        raise DataError(f"{path}: unexpected label value(s) {unexpected} for {convention.name}")
    for label in convention.not_tumour & set(present.tolist()):
        logger.debug("%s: label %d is not tumour; set to 0", path, label)
        labels[labels == label] = 0
    return labels


def check_headers(record: CaseRecord, opened: dict[Path, nib.Nifti1Image]) -> None:
    """Header checks of one record; ``opened`` memoises headers within one discover call."""
    for path in (record.image, record.mask):
        if path not in opened:
            opened[path] = _open(path)
    _check_pair(record, opened[record.image], opened[record.mask])


def _open(path: Path) -> nib.Nifti1Image:
    """The NIfTI image at ``path`` with its header read (voxels stay on disk)."""
    if nifti_stem(path.name) is None:
        raise DataError(f"{path}: not a NIfTI file name (.nii or .nii.gz)")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    stored = _stored_header(path)
    if stored is not None:  # before nib.load, which repairs (and logs) a pixdim of 0 or < 0
        _check_voxel_size(path, stored["pixdim"][1:4], "in its header (pixdim)")
    try:
        nii = nib.load(path, mmap=False)  # voxels are read into memory, never left mapped
    except Exception as exc:  # nibabel raises many types for a bad or truncated header
        detail = one_line(exc).replace(f'"{path}"', "it").replace(str(path), "it")
        raise DataError(f"{path}: not a readable NIfTI file ({detail})") from exc
    if not isinstance(nii, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise DataError(f"{path}: not a NIfTI file ({type(nii).__name__})")
    if nii.get_data_dtype().kind not in REAL_KINDS:
        raise DataError(
            f"{path}: voxels of type {nii.header.get_value_label('datatype')} are not real "
            "numbers; fedll reads real-valued images and masks"
        )
    _check_voxel_size(path, np.linalg.norm(nii.affine[:3, :3], axis=0), "by its affine")
    return nii


def _stored_header(path: Path) -> nib.Nifti1Header | None:
    """The NIfTI-1 or NIfTI-2 header as stored in the file, unrepaired; None when it cannot
    be read (then nib.load says why)."""
    try:
        with ImageOpener(path) as handle:
            block = handle.read(nib.Nifti2Header.template_dtype.itemsize)
        for klass in (nib.Nifti1Header, nib.Nifti2Header):  # told apart by sizeof_hdr
            size = klass.template_dtype.itemsize
            if len(block) >= size:
                header = klass(block[:size], check=False)
                if int(header["sizeof_hdr"]) == size:
                    return header
    except Exception:  # a bad or truncated header: nib.load's message names the problem
        return None
    return None


def _check_voxel_size(path: Path, sizes: np.ndarray, where: str) -> None:
    """DataError unless the voxel size (X, Y, Z of the stored axes, mm) is positive and
    finite."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if not (np.isfinite(sizes).all() and (sizes > 0).all()):
        shown = " x ".join(f"{s:g}" for s in sizes)
        raise DataError(
            f"{path}: voxel size {shown} mm {where} is not positive and finite; fedll will "
            "not guess one"
        )


def _check_pair(record: CaseRecord, image: nib.Nifti1Image, mask: nib.Nifti1Image) -> None:
    """Dimensions, channel and grid agreement of an image and its mask, from headers."""
    image_shape = _spatial_shape(record.image, image.shape, record.channel)
    mask_shape = _spatial_shape(record.mask, mask.shape, None)
    image_grid = _canonical_grid(image_shape, image.affine)
    mask_grid = _canonical_grid(mask_shape, mask.affine)
    if image_grid[0] != mask_grid[0]:
        raise DataError(
            f"{record.mask}: mask shape {mask_shape} does not match image {record.image.name} "
            f"{image_shape}"
        )
    if not np.allclose(image_grid[1], mask_grid[1], rtol=0.0, atol=AFFINE_ATOL_MM):
        raise DataError(
            f"{record.mask}: mask affine differs from image {record.image.name} "
            f"(by up to {np.abs(image_grid[1] - mask_grid[1]).max():.3g} mm)"
        )


def _spatial_shape(path: Path, shape: tuple[int, ...], channel: int | None) -> tuple[int, ...]:
    """(X, Y, Z) of a 3-D file, a 4-D one with a trailing 1, or a 4-D one holding ``channel``."""
    if channel is not None:
        if len(shape) != 4 or not 0 <= channel < shape[3]:
            raise DataError(f"{path}: expected a 4-D image with channel {channel}, got {shape}")
        return shape[:3]
    if len(shape) == 3 or (len(shape) > 3 and all(n == 1 for n in shape[3:])):
        return shape[:3]
    raise DataError(f"{path}: expected a 3-D volume, got shape {shape}")


def _canonical_grid(
    shape: tuple[int, ...], affine: np.ndarray
) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine after reorientation to RAS+, as nib.as_closest_canonical would give."""
    ornt = orientations.io_orientation(affine)
    new_shape = [0, 0, 0]
    for axis, (target, _) in enumerate(ornt):
        new_shape[int(target)] = shape[axis]
    return tuple(new_shape), affine @ orientations.inv_ornt_aff(ornt, shape)


def nifti_stem(name: str) -> str | None:
    """``name`` without .nii or .nii.gz, or None when it is not a NIfTI file name."""
    lower = name.lower()
    for extension in (".nii.gz", ".nii"):
        if lower.endswith(extension):
            return name[: -len(extension)]
    return None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
