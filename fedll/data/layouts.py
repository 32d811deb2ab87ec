"""Discover, read and validate real NIfTI cohorts: BraTS 2018-2021, BraTS 2023/2024 GLI, MSD, CSV.

Every layout becomes the same list of :class:`CaseRecord` (one per patient x modality, T2 and
FLAIR only), and every record reads into the same :class:`Volume`: a float32 image and uint8
labels in canonical RAS+ orientation with the voxel spacing.

Validation is split by cost. :func:`discover` checks what headers can tell (the folder
structure, every expected file present, each file a NIfTI whose header reads, 3-D or a 4-D
with the channel, image and mask grids equal after reorientation), so a bad cohort fails
before any training and no case is dropped silently. :func:`load_volume` repeats the header
checks (records can be built by hand, files can change) and checks the voxels: truncated
data, NaN/inf, an empty (constant) image, non-integer or unexpected label values. Every
problem raises :class:`~fedll.errors.DataError` with one line that starts with the file.

Labels keep their stored values, validated against the convention of the file's dataset
(:func:`label_convention`), with one exception: in BraTS 2024 GLI, label 4 is the resection
cavity, which is not tumour, so it becomes 0 (background). Rejecting it instead would lose
every post-operative 2024 case, and whole tumour is label > 0 in every other convention.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from fedll.data import MODALITIES
from fedll.errors import DataError

logger = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("brats2021", "brats2023", "msd", "manifest")
AFFINE_ATOL_MM = 1e-3  # image and mask affines may differ by float rounding, not by a voxel
LABEL_ROUND_ATOL = 1e-3  # float masks are rounded to integers when this close to them
MANIFEST_COLUMNS: tuple[str, ...] = ("patient", "site", "modality", "image", "mask")
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Names a manifest may use for T2 and FLAIR, and modalities it may list that fedll does not use.
MODALITY_ALIASES: Mapping[str, str] = {"t2": "t2", "t2w": "t2", "flair": "flair", "t2f": "flair"}
UNUSED_MODALITIES: frozenset[str] = frozenset({"t1", "t1w", "t1ce", "t1c", "t1gd", "t1n", "pd"})


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
_BRATS2017_MASK = re.compile(r".*_seg$", re.IGNORECASE)


def label_convention(record: CaseRecord) -> LabelConvention:
    """The label convention of a record, told by its mask's file name (or its MSD channel)."""
    if record.channel is not None:
        return MSD_BRAIN
    stem = _nifti_stem(record.mask.name) or record.mask.name
    if _GLI_MASK.match(stem):
        return BRATS_GLI
    if _BRATS2017_MASK.match(stem):
        return BRATS2017
    return GENERIC


# ----------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class _FolderLayout:
    """A one-folder-per-case layout: files are ``<case><suffix>.nii[.gz]``."""

    name: str
    modality_suffixes: tuple[tuple[str, str], ...]  # (modality, file-stem suffix)
    mask_suffix: str
    case_prefix: str = ""  # case folders must start with this (BraTS-GLI-)


_BRATS2021 = _FolderLayout("brats2021", (("t2", "_t2"), ("flair", "_flair")), "_seg")
_BRATS2023 = _FolderLayout(
    "brats2023", (("t2", "-t2w"), ("flair", "-t2f")), "-seg", case_prefix="BraTS-GLI-"
)


def discover(root: Path, layout: str = "auto") -> list[CaseRecord]:
    """List the T2 and FLAIR records of a cohort and check their headers.

    root: a cohort folder, or a manifest CSV (``layout="manifest"`` also takes a folder that
    holds manifest.csv). layout: one of :data:`LAYOUTS` or "auto" (manifest.csv, then
    dataset.json + imagesTr/, then BraTS case folders by their file names).
    Folder layouts are returned sorted by patient, then T2 before FLAIR; manifests in row order.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "manifest":
        records = _discover_manifest(root if root.is_file() else root / "manifest.csv")
    elif not root.is_dir():
        raise DataError(f"{root}: layout {layout!r} needs a folder")
    elif layout == "brats2021":
        records = _discover_folders(root, _BRATS2021)
    elif layout == "brats2023":
        records = _discover_folders(root, _BRATS2023)
    elif layout == "msd":
        records = _discover_msd(root)
    else:
        raise DataError(
            f"{root}: unknown layout {layout!r} (expected auto or {', '.join(LAYOUTS)})"
        )
    if not records:
        raise DataError(f"{root}: no T2 or FLAIR cases found in layout {layout!r}")
    headers: dict[Path, nib.Nifti1Image] = {}
    for record in records:
        _check_headers(record, headers)
    logger.info("discovered %d records (%s) in %s", len(records), layout, root)
    return records


def detect_layout(root: Path) -> str:
    """The layout of ``root`` judged by the files present; DataError when none fits."""
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "manifest"
        raise DataError(f"{root}: a file must be a manifest .csv")
    if (root / "manifest.csv").is_file():
        return "manifest"
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "msd"
    stems = [stem for case in _case_folders(root) for stem in _nifti_stems(case)]
    if any(stem.lower().endswith(("-t2w", "-t2f", "-seg")) for stem in stems):
        return "brats2023"
    if any(stem.lower().endswith(("_t2", "_flair", "_seg")) for stem in stems):
        return "brats2021"
    raise DataError(
        f"{root}: cannot tell the layout (no manifest.csv, no dataset.json + imagesTr/, "
        "no BraTS case folders)"
    )


def _discover_folders(root: Path, layout: _FolderLayout) -> list[CaseRecord]:
    records: list[CaseRecord] = []
    for case in _case_folders(root):
        if not case.name.startswith(layout.case_prefix):
            raise DataError(
                f"{case}: case folder does not start with {layout.case_prefix!r} "
                f"(layout {layout.name} reads glioma cases only)"
            )
        files = _nifti_files(case)
        mask = _one_file(case, files, layout.mask_suffix, "mask")
        for modality, suffix in layout.modality_suffixes:
            image = _one_file(case, files, suffix, f"{modality} image")
            records.append(CaseRecord(case.name, modality, image, mask))
    return sorted(records, key=lambda r: (r.patient, MODALITIES.index(r.modality)))


def _case_folders(root: Path) -> list[Path]:
    """Folders holding NIfTI files, directly under root or one level down (HGG/, LGG/)."""
    if loose := _nifti_files(root):
        raise DataError(
            f"{loose[0]}: NIfTI file outside a case folder (root must hold case folders)"
        )
    cases: list[Path] = []
    for sub in _visible_dirs(root):
        if _nifti_files(sub):
            cases.append(sub)
            continue
        inner = _visible_dirs(sub)
        grouped = [d for d in inner if _nifti_files(d)]
        # A folder without NIfTI is not a case (e.g. __MACOSX); say so rather than drop it quietly.
        for empty in [d for d in inner if d not in grouped] if grouped else [sub]:
            logger.warning("skipping %s: no NIfTI files", empty)
        cases.extend(grouped)
    return cases


def _one_file(case: Path, files: list[Path], suffix: str, what: str) -> Path:
    matches = [f for f in files if (_nifti_stem(f.name) or "").lower().endswith(suffix.lower())]
    if not matches:
        raise DataError(f"{case}: missing {what} (*{suffix}.nii or *{suffix}.nii.gz)")
    if len(matches) > 1:
        names = ", ".join(f.name for f in matches)
        raise DataError(f"{case}: more than one {what} ({names})")
    return matches[0]


def _discover_msd(root: Path) -> list[CaseRecord]:
    """MSD Task01_BrainTumour: 4-D images (channels last) in imagesTr/, masks in labelsTr/."""
    spec_file = root / "dataset.json"
    try:
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
        names = {int(k): str(v).strip().lower() for k, v in spec["modality"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{spec_file}: no readable 'modality' map ({_one_line(exc)})") from exc
    channels: dict[str, int] = {}
    for index, name in sorted(names.items()):
        modality = MODALITY_ALIASES.get(name)
        if modality is not None and modality not in channels:
            channels[modality] = index
    if missing := [m for m in MODALITIES if m not in channels]:
        raise DataError(f"{spec_file}: 'modality' has no {' or '.join(missing)} channel ({names})")
    labels_dir = root / "labelsTr"
    records: list[CaseRecord] = []
    for image in _nifti_files(root / "imagesTr"):
        mask = labels_dir / image.name
        if not mask.is_file():
            raise DataError(f"{image}: missing mask {mask}")
        patient = _nifti_stem(image.name) or image.name
        for modality in MODALITIES:
            records.append(CaseRecord(patient, modality, image, mask, channel=channels[modality]))
    return sorted(records, key=lambda r: (r.patient, MODALITIES.index(r.modality)))


def _discover_manifest(path: Path) -> list[CaseRecord]:
    """A CSV with columns patient, site, modality, image, mask (and optionally split)."""
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip().lower() for c in reader.fieldnames or []]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable manifest ({_one_line(exc)})") from exc
    if missing := [c for c in MANIFEST_COLUMNS if c not in columns]:
        raise DataError(
            f"{path}: manifest lacks column(s) {', '.join(missing)} "
            f"(needs {', '.join(MANIFEST_COLUMNS)}; optional split)"
        )
    records: list[CaseRecord] = []
    seen: set[tuple[str, str]] = set()
    for number, raw in enumerate(rows, start=1):
        row = {str(k).strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{path}: row {number} (line {number + 1})"
        record = _manifest_record(path.parent, row, where)
        if record is None:
            continue
        if (record.patient, record.modality) in seen:
            raise DataError(f"{where}: patient {record.patient!r} lists {record.modality} twice")
        seen.add((record.patient, record.modality))
        records.append(record)
    return records


def _manifest_record(folder: Path, row: Mapping[str, str], where: str) -> CaseRecord | None:
    if not row["patient"]:
        raise DataError(f"{where}: empty patient")
    name = row["modality"].lower()
    if name in UNUSED_MODALITIES:
        logger.debug("%s: skipping modality %s", where, name)
        return None
    if name not in MODALITY_ALIASES:
        known = ", ".join(sorted(MODALITY_ALIASES))
        raise DataError(f"{where}: unknown modality {row['modality']!r} (expected one of {known})")
    split = row.get("split", "").lower() or None
    if split is not None and split not in SPLITS:
        raise DataError(f"{where}: unknown split {row['split']!r} (expected {', '.join(SPLITS)})")
    paths = {}
    for column in ("image", "mask"):
        if not row[column]:
            raise DataError(f"{where}: empty {column} path")
        paths[column] = folder / Path(row[column]).expanduser()  # absolute paths stay absolute
        if not paths[column].is_file():
            raise DataError(f"{where}: {column} file not found: {paths[column]}")
    return CaseRecord(
        patient=row["patient"],
        modality=MODALITY_ALIASES[name],
        image=paths["image"],
        mask=paths["mask"],
        site=row["site"] or None,
        split=split,
    )


# ----------------------------------------------------------------------------- reading


def load_volume(record: CaseRecord) -> Volume:
    """Read, validate and reorient one record (see the module docstring for the checks)."""
    image_nii = _open(record.image)
    mask_nii = _open(record.mask)
    _check_pair(record, image_nii, mask_nii)
    image = _read(record.image, image_nii, record.channel)
    raw_labels = _read(record.mask, mask_nii, None)
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        raise DataError(f"{record.image}: {bad} voxel(s) are NaN or infinite")
    low, high = float(image.min()), float(image.max())
    if low == high:
        raise DataError(f"{record.image}: image is constant ({low:g}): no brain")
    labels = _validate_labels(record.mask, raw_labels, label_convention(record))
    ornt = orientations.io_orientation(image_nii.affine)
    canonical_affine = image_nii.affine @ orientations.inv_ornt_aff(ornt, image.shape)
    sx, sy, sz = (float(s) for s in np.linalg.norm(canonical_affine[:3, :3], axis=0))
    return Volume(
        image=np.ascontiguousarray(orientations.apply_orientation(image, ornt)),
        labels=np.ascontiguousarray(orientations.apply_orientation(labels, ornt)),
        spacing=(sx, sy, sz),
    )


def _read(path: Path, nii: nib.Nifti1Image, channel: int | None) -> np.ndarray:
    """The scaled voxels of a 3-D image, or of one channel of a 4-D one: (X, Y, Z)."""
    try:
        data = np.asanyarray(nii.dataobj) if channel is None else nii.dataobj[..., channel]
    except Exception as exc:  # zlib, EOF and size errors all mean the same to the user
        raise DataError(f"{path}: cannot read voxel data, truncated? ({_one_line(exc)})") from exc
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


# ----------------------------------------------------------------------------- headers


def _check_headers(record: CaseRecord, opened: dict[Path, nib.Nifti1Image]) -> None:
    """Header checks of one record; ``opened`` memoises headers within one discover call."""
    for path in (record.image, record.mask):
        if path not in opened:
            opened[path] = _open(path)
    _check_pair(record, opened[record.image], opened[record.mask])


def _open(path: Path) -> nib.Nifti1Image:
    """The NIfTI image at ``path`` with its header read (voxels stay on disk)."""
    if _nifti_stem(path.name) is None:
        raise DataError(f"{path}: not a NIfTI file name (.nii or .nii.gz)")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        nii = nib.load(path, mmap=False)  # voxels are read into memory, never left mapped
    except Exception as exc:  # nibabel raises many types for a bad or truncated header
        detail = _one_line(exc).replace(f'"{path}"', "it").replace(str(path), "it")
        raise DataError(f"{path}: not a readable NIfTI file ({detail})") from exc
    if not isinstance(nii, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise DataError(f"{path}: not a NIfTI file ({type(nii).__name__})")
    return nii


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


# ----------------------------------------------------------------------------- helpers


def _nifti_stem(name: str) -> str | None:
    """``name`` without .nii or .nii.gz, or None when it is not a NIfTI file name."""
    lower = name.lower()
    for extension in (".nii.gz", ".nii"):
        if lower.endswith(extension):
            return name[: -len(extension)]
    return None


def _nifti_files(folder: Path) -> list[Path]:
    """Sorted visible NIfTI files of a folder (macOS ``._*`` and other dot files skipped)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and _nifti_stem(p.name) is not None
    )


def _nifti_stems(folder: Path) -> Iterable[str]:
    return (_nifti_stem(p.name) or "" for p in _nifti_files(folder))


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
