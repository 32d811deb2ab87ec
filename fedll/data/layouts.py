"""Discover the cases of a cohort on disk: BraTS 2018-2021, BraTS 2023/2024 GLI, MSD,
TCGA-GBM/LGG (Bakas et al. 2017), CSV.

Every layout becomes the same list of :class:`~fedll.data.nifti.CaseRecord` (one per patient
x modality, T2 and FLAIR only). :func:`discover` checks what headers can tell (the folder
structure, every expected file present, each file a NIfTI whose header reads, image and mask
grids equal after reorientation; :func:`fedll.data.nifti.check_headers`), so a bad cohort
fails before any training and no case is dropped silently; reading the voxels is
:func:`fedll.data.nifti.load_volume`'s. Every problem raises :class:`~fedll.errors.DataError`
with one line that starts with the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib

from fedll.data import MODALITIES
from fedll.data.manifest import MODALITY_ALIASES, read_manifest
from fedll.data.nifti import CaseRecord, check_headers, nifti_stem, one_line
from fedll.errors import DataError

logger = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("brats2021", "brats2023", "msd", "tcga-gbm", "manifest")


@dataclass(frozen=True)
class _FolderLayout:
    """A one-folder-per-case layout: files are ``<case><suffix>.nii[.gz]``."""

    name: str
    modality_suffixes: tuple[tuple[str, str], ...]  # (modality, file-stem suffix)
    mask_suffix: str
    case_prefix: str = ""  # case folders must start with this (BraTS-GLI-)
    preferred_mask_suffix: str | None = None  # taken instead of mask_suffix where present


_BRATS2021 = _FolderLayout("brats2021", (("t2", "_t2"), ("flair", "_flair")), "_seg")
_BRATS2023 = _FolderLayout(
    "brats2023", (("t2", "-t2w"), ("flair", "-t2f")), "-seg", case_prefix="BraTS-GLI-"
)
# "Pre-operative TCGA-GBM (and TCGA-LGG) NIfTI and Segmentations" (Bakas et al., Sci Data
# 2017; TCIA doi 10.7937/K9/TCIA.2017.KLXWJJ1Q): TCGA-02-0006/TCGA-02-0006_1996.08.23_t2.nii.gz
# and _flair, _t1, _t1Gd; labels _GlistrBoost (automatic) and, for most patients,
# _GlistrBoost_ManuallyCorrected (preferred); BraTS 2017 label values
_TCGA = _FolderLayout(
    "tcga-gbm",
    (("t2", "_t2"), ("flair", "_flair")),
    "_GlistrBoost",
    case_prefix="TCGA-",
    preferred_mask_suffix="_GlistrBoost_ManuallyCorrected",
)
TCGA_MASK_SUFFIXES = ("_glistrboost", "_glistrboost_manuallycorrected")


def discover(root: Path, layout: str = "auto") -> list[CaseRecord]:
    """List the T2 and FLAIR records of a cohort and check their headers.

    root: a cohort folder, or a manifest CSV (``layout="manifest"`` also takes a folder that
    holds manifest.csv). layout: one of :data:`LAYOUTS` or "auto" (manifest.csv, then
    dataset.json + imagesTr/, then TCGA or BraTS case folders by their file names).
    Folder layouts are returned sorted by patient, then T2 before FLAIR; manifests in row order.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "manifest":
        records = read_manifest(root if root.is_file() else root / "manifest.csv")
    elif not root.is_dir():
        raise DataError(f"{root}: layout {layout!r} needs a folder")
    elif layout == "brats2021":
        records = _discover_folders(root, _BRATS2021)
    elif layout == "brats2023":
        records = _discover_folders(root, _BRATS2023)
    elif layout == "tcga-gbm":
        records = _discover_folders(root, _TCGA)
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
        check_headers(record, headers)
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
    stems = [stem for case in _case_folders(root) for stem in nifti_stems(case)]
    if any(stem.lower().endswith(TCGA_MASK_SUFFIXES) for stem in stems):
        return "tcga-gbm"
    if any(stem.lower().endswith(("-t2w", "-t2f", "-seg")) for stem in stems):
        return "brats2023"
    if any(stem.lower().endswith(("_t2", "_flair", "_seg")) for stem in stems):
        return "brats2021"
    raise DataError(
        f"{root}: cannot tell the layout (no manifest.csv, no dataset.json + imagesTr/, "
        "no BraTS or TCGA case folders)"
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
        mask = _mask(case, files, layout)
        for modality, suffix in layout.modality_suffixes:
            image = _one_file(case, files, suffix, f"{modality} image")
            records.append(CaseRecord(case.name, modality, image, mask))
    return sorted(records, key=lambda r: (r.patient, MODALITIES.index(r.modality)))


def _mask(case: Path, files: list[Path], layout: _FolderLayout) -> Path:
    """The case's mask: the preferred one (TCGA's manually corrected) where present."""
    preferred = layout.preferred_mask_suffix
    if preferred is not None and any(_ends_with(f, preferred) for f in files):
        return _one_file(case, files, preferred, "mask")
    return _one_file(case, files, layout.mask_suffix, "mask")


def _ends_with(path: Path, suffix: str) -> bool:
    return (nifti_stem(path.name) or "").lower().endswith(suffix.lower())


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
    matches = [f for f in files if _ends_with(f, suffix)]
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
        raise DataError(f"{spec_file}: no readable 'modality' map ({one_line(exc)})") from exc
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
        patient = nifti_stem(image.name) or image.name
        for modality in MODALITIES:
            records.append(CaseRecord(patient, modality, image, mask, channel=channels[modality]))
    return sorted(records, key=lambda r: (r.patient, MODALITIES.index(r.modality)))


def _nifti_files(folder: Path) -> list[Path]:
    """Sorted visible NIfTI files of a folder (macOS ``._*`` and other dot files skipped)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and nifti_stem(p.name) is not None
    )


def nifti_stems(folder: Path) -> Iterable[str]:
    return (nifti_stem(p.name) or "" for p in _nifti_files(folder))


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
