"""Tiny NIfTI cohorts in every supported layout (12 x 14 x 10 voxels, two patients each)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (12, 14, 10)
WriteNifti = Callable[..., Path]


def phantom(seed: int, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A float32 ellipsoid 'brain' with noise and a BraTS 2021-labelled blob (1 core, 2 oedema,
    4 enhancing) in slices z = 3..5 of 10; background exactly 0. Returns (image, labels)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    radius = np.sqrt((grid**2).sum(axis=0))
    brain = radius < 0.95
    image = np.where(brain, 100 + 10 * rng.standard_normal(shape), 0).astype(np.float32)
    centre = np.array([0.2, -0.1, -0.1])[:, None, None, None]
    blob = np.sqrt(
        ((grid - centre) ** 2 / np.array([0.3, 0.3, 0.15])[:, None, None, None] ** 2).sum(0)
    )
    labels = np.zeros(shape, np.uint8)
    labels[blob < 1.0] = 2
    labels[blob < 0.7] = 4
    labels[blob < 0.4] = 1
    image[labels > 0] += 60
    return image, labels


def write(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    slope: float | None = None,
    inter: float = 0.0,
) -> Path:
    """Write ``data`` as NIfTI (.nii or .nii.gz by name). With ``slope``, ``data`` holds the
    stored (raw) values and readers see raw * slope + inter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nii = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    if slope is not None:
        nii.header.set_slope_inter(slope, inter)
    nib.save(nii, path)
    return path


@pytest.fixture
def write_nifti() -> WriteNifti:
    return write


@pytest.fixture
def make_phantom() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    return phantom


def _brats2021_case(folder: Path, case: str, seed: int, ext: str = ".nii.gz") -> None:
    image, labels = phantom(seed)
    write(folder / case / f"{case}_t1{ext}", image)
    write(folder / case / f"{case}_t2{ext}", image)
    write(folder / case / f"{case}_flair{ext}", image * 0.5 + 10 * (image > 0))
    write(folder / case / f"{case}_seg{ext}", labels)


@pytest.fixture
def brats2021_root(tmp_path: Path) -> Path:
    root = tmp_path / "BraTS2021"
    for index in range(2):
        _brats2021_case(root, f"BraTS2021_{index:05d}", seed=index)
    (root / "name_mapping.csv").write_text("BraTS2021,TCGA\n")
    return root


@pytest.fixture
def brats2020_root(tmp_path: Path) -> Path:
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    for index in range(1, 3):
        _brats2021_case(root, f"BraTS20_Training_{index:03d}", seed=index, ext=".nii")
    return root


@pytest.fixture
def brats2019_root(tmp_path: Path) -> Path:
    root = tmp_path / "MICCAI_BraTS_2019_Data_Training"
    _brats2021_case(root / "HGG", "BraTS19_2013_2_1", seed=3)
    _brats2021_case(root / "LGG", "BraTS19_2013_0_1", seed=4)
    return root


@pytest.fixture
def brats2023_root(tmp_path: Path) -> Path:
    """Two GLI cases; the second (a 2024 post-operative case) has a resection cavity, label 4."""
    root = tmp_path / "BraTS2024-GLI"
    for index in range(2):
        case = f"BraTS-GLI-{index:05d}-000"
        image, labels = phantom(index)
        labels[labels == 4] = 3  # 2023 convention: 3 = enhancing tumour
        if index == 1:
            labels[:2, :2, :2] = 4
        for suffix, data in (("t1n", image), ("t2w", image), ("t2f", image * 0.5 + 5)):
            write(root / case / f"{case}-{suffix}.nii.gz", np.where(image > 0, data, 0))
        write(root / case / f"{case}-seg.nii.gz", labels)
    return root


def tcga_case(root: Path, patient: str, seed: int, corrected: bool = True) -> Path:
    """A TCGA case (Bakas et al. 2017 names): t1, t1Gd, t2, flair and _GlistrBoost labels;
    with ``corrected``, also _GlistrBoost_ManuallyCorrected (the automatic labels then lack
    the enhancing label 4, so a test can tell which was read)."""
    image, labels = phantom(seed)
    stem = root / patient / f"{patient}_1996.08.23"
    for suffix, data in (("t1", image), ("t1Gd", image), ("t2", image)):
        write(Path(f"{stem}_{suffix}.nii.gz"), data)
    write(Path(f"{stem}_flair.nii.gz"), image * 0.5 + 10 * (image > 0))
    automatic = np.where(labels == 4, 2, labels).astype(np.uint8) if corrected else labels
    write(Path(f"{stem}_GlistrBoost.nii.gz"), automatic)
    if corrected:
        write(Path(f"{stem}_GlistrBoost_ManuallyCorrected.nii.gz"), labels)
    return root / patient


@pytest.fixture
def make_tcga_case() -> Callable[..., Path]:
    return tcga_case


@pytest.fixture
def tcga_root(tmp_path: Path) -> Path:
    """Two TCGA-GBM cases, the first with manually corrected labels, the second without."""
    root = tmp_path / "Pre-operative_TCGA_GBM_NIfTI_and_Segmentations"
    tcga_case(root, "TCGA-02-0006", seed=0, corrected=True)
    tcga_case(root, "TCGA-08-0509", seed=1, corrected=False)
    return root


MSD_CHANNELS = ("FLAIR", "T1w", "t1gd", "T2w")


@pytest.fixture
def msd_root(tmp_path: Path) -> Path:
    """Task01_BrainTumour: channel c of each 4-D image is the phantom times (c + 1)."""
    root = tmp_path / "Task01_BrainTumour"
    meta = {
        "name": "BRATS",
        "modality": {str(i): name for i, name in enumerate(MSD_CHANNELS)},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing"},
        "training": [],
    }
    for index in range(1, 3):
        name = f"BRATS_{index:03d}.nii.gz"
        image, labels = phantom(index)
        labels[labels == 4] = 3
        stack = np.stack([image * (c + 1) for c in range(len(MSD_CHANNELS))], axis=-1)
        write(root / "imagesTr" / name, stack)
        write(root / "labelsTr" / name, labels)
        meta["training"].append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        (root / "imagesTr" / f"._{name}").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    write(root / "imagesTs" / "BRATS_900.nii.gz", stack)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def manifest_csv(tmp_path: Path) -> Path:
    """The long manifest: two patients x (t2, flair), relative paths except one absolute."""
    root = tmp_path / "cohort"
    rows = ["patient,site,modality,split,image,mask"]
    for index, (patient, site, split) in enumerate(
        (("p0", "siteA", "train"), ("p1", "siteB", "test"))
    ):
        image, labels = phantom(index)
        write(root / patient / f"{patient}_t2.nii.gz", image)
        write(root / patient / f"{patient}_flair.nii.gz", image * 0.5)
        write(root / patient / f"{patient}_seg.nii.gz", labels)
        rows.append(
            f"{patient},{site},t2,{split},{patient}/{patient}_t2.nii.gz,{patient}/{patient}_seg.nii.gz"
        )
        flair = (
            root / patient / f"{patient}_flair.nii.gz"
            if index
            else f"{patient}/{patient}_flair.nii.gz"
        )
        rows.append(f"{patient},{site},FLAIR,{split},{flair},{patient}/{patient}_seg.nii.gz")
    path = root / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path
