from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedll.data.layouts import detect_layout, discover
from fedll.data.nifti import CaseRecord, label_convention, load_volume
from fedll.errors import DataError

Phantom = Callable[..., tuple[np.ndarray, np.ndarray]]
WriteNifti = Callable[..., Path]


def _raises(call, *names: str) -> str:
    """Run ``call``; it must raise a one-line DataError naming every one of ``names``."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message
    return message


def _record(root: Path, case: str = "BraTS2021_00000", modality: str = "t2") -> CaseRecord:
    folder = root / case
    return CaseRecord(
        case, modality, folder / f"{case}_{modality}.nii.gz", folder / f"{case}_seg.nii.gz"
    )


# ----------------------------------------------------------------------------- layouts


def test_brats2021_records(brats2021_root: Path, make_phantom: Phantom) -> None:
    records = discover(brats2021_root)
    assert [(r.patient, r.modality) for r in records] == [
        ("BraTS2021_00000", "t2"),
        ("BraTS2021_00000", "flair"),
        ("BraTS2021_00001", "t2"),
        ("BraTS2021_00001", "flair"),
    ]
    assert records[1].image.name == "BraTS2021_00000_flair.nii.gz"
    assert records[1].mask.name == "BraTS2021_00000_seg.nii.gz"
    assert {r.site for r in records} == {None} and {r.channel for r in records} == {None}
    volume = load_volume(records[0])
    image, labels = make_phantom(0)
    np.testing.assert_array_equal(volume.image, image)
    np.testing.assert_array_equal(volume.labels, labels)
    assert volume.image.dtype == np.float32 and volume.labels.dtype == np.uint8
    assert volume.spacing == (1.0, 1.0, 1.0)


def test_brats2020_uncompressed_and_2019_grade_folders(
    brats2020_root: Path, brats2019_root: Path
) -> None:
    records = discover(brats2020_root)
    assert detect_layout(brats2020_root) == "brats2021"
    assert [r.patient for r in records[::2]] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert records[0].image.name == "BraTS20_Training_001_t2.nii"
    load_volume(records[0])
    records = discover(brats2019_root, layout="brats2021")
    assert sorted({r.patient for r in records}) == ["BraTS19_2013_0_1", "BraTS19_2013_2_1"]
    assert {r.image.parent.parent.name for r in records} == {"HGG", "LGG"}


def test_brats2023_names_and_resection_cavity(brats2023_root: Path, make_phantom: Phantom) -> None:
    records = discover(brats2023_root)
    assert detect_layout(brats2023_root) == "brats2023"
    assert [(r.patient, r.modality, r.image.name[-10:]) for r in records[:2]] == [
        ("BraTS-GLI-00000-000", "t2", "t2w.nii.gz"),
        ("BraTS-GLI-00000-000", "flair", "t2f.nii.gz"),
    ]
    _, labels = make_phantom(1)
    labels[labels == 4] = 3
    volume = load_volume(records[2])  # the 2024 case: its cavity (label 4) becomes background
    assert set(np.unique(volume.labels)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(volume.labels[:2, :2, :2], 0)
    np.testing.assert_array_equal(volume.labels, labels)


def test_msd_two_records_per_case_with_channels(msd_root: Path, make_phantom: Phantom) -> None:
    records = discover(msd_root)
    assert detect_layout(msd_root) == "msd"
    channels = json.loads((msd_root / "dataset.json").read_text())["modality"]
    flair, t2 = (int(k) for name in ("FLAIR", "T2w") for k, v in channels.items() if v == name)
    assert [(r.patient, r.modality, r.channel) for r in records] == [
        ("BRATS_001", "t2", t2),
        ("BRATS_001", "flair", flair),
        ("BRATS_002", "t2", t2),
        ("BRATS_002", "flair", flair),
    ]
    assert {r.mask.parent.name for r in records} == {"labelsTr"}  # ._* files and imagesTs skipped
    image, labels = make_phantom(1)
    labels[labels == 4] = 3
    volume = load_volume(records[0])
    np.testing.assert_allclose(volume.image, image * (t2 + 1))
    np.testing.assert_array_equal(volume.labels, labels)
    np.testing.assert_allclose(load_volume(records[1]).image, image * (flair + 1))


def test_manifest_records(manifest_csv: Path) -> None:
    for root in (manifest_csv, manifest_csv.parent):
        records = discover(root)
        assert [(r.patient, r.site, r.modality, r.split) for r in records] == [
            ("p0", "siteA", "t2", "train"),
            ("p0", "siteA", "flair", "train"),
            ("p1", "siteB", "t2", "test"),
            ("p1", "siteB", "flair", "test"),
        ]
        assert all(r.image.is_file() and r.mask.is_file() for r in records)
    # manifest.csv wins over the BraTS-style folders beside it
    assert detect_layout(manifest_csv.parent) == "manifest"
    assert label_convention(records[0]).allowed == {0, 1, 2, 4}


def test_manifest_without_split_skips_unused_modalities(manifest_csv: Path) -> None:
    lines = manifest_csv.read_text().splitlines()
    rows = [",".join(c for i, c in enumerate(line.split(",")) if i != 3) for line in lines]
    rows.append(rows[1].replace(",t2,", ",t1,"))
    manifest_csv.write_text("\n".join(rows) + "\n")
    records = discover(manifest_csv)
    assert len(records) == 4 and {r.split for r in records} == {None}


# ----------------------------------------------------------------------------- reading


def test_lps_and_permuted_storage_read_equal_to_ras_twin(
    tmp_path: Path, make_phantom: Phantom, write_nifti: WriteNifti
) -> None:
    image, labels = make_phantom(5)
    ras = np.diag([1.0, 1.5, 3.0, 1.0])
    ras[:3, 3] = [-10, 20, 5]
    write_nifti(tmp_path / "ras" / "c_t2.nii.gz", image, ras)
    write_nifti(tmp_path / "ras" / "c_seg.nii.gz", labels, ras)
    # LPS: x and y flipped, then stored as (Z, Y, X)
    flip = ras.copy()
    flip[0, 0], flip[1, 1] = -1.0, -1.5
    flip[:3, 3] = ras[:3, :3] @ [image.shape[0] - 1, image.shape[1] - 1, 0] + ras[:3, 3]
    lps = np.transpose(image[::-1, ::-1, :], (2, 1, 0))
    lps_affine = flip[:, [2, 1, 0, 3]]
    write_nifti(tmp_path / "lps" / "c_t2.nii.gz", lps, lps_affine)
    write_nifti(
        tmp_path / "lps" / "c_seg.nii.gz", np.transpose(labels[::-1, ::-1], (2, 1, 0)), lps_affine
    )
    assert nib.aff2axcodes(lps_affine) == ("S", "P", "L")
    twin = load_volume(
        CaseRecord("c", "t2", tmp_path / "ras/c_t2.nii.gz", tmp_path / "ras/c_seg.nii.gz")
    )
    other = load_volume(
        CaseRecord("c", "t2", tmp_path / "lps/c_t2.nii.gz", tmp_path / "lps/c_seg.nii.gz")
    )
    np.testing.assert_array_equal(other.image, twin.image)
    np.testing.assert_array_equal(other.labels, twin.labels)
    assert other.spacing == twin.spacing == (1.0, 1.5, 3.0)  # anisotropic spacing, RAS order
    canonical = nib.as_closest_canonical(nib.load(tmp_path / "lps/c_t2.nii.gz"))
    np.testing.assert_array_equal(other.image, canonical.get_fdata())


def test_int16_with_scl_slope_reads_scaled_floats(
    tmp_path: Path, make_phantom: Phantom, write_nifti: WriteNifti
) -> None:
    image, labels = make_phantom(0)
    raw = np.round(image * 4).astype(np.int16)
    write_nifti(tmp_path / "c_t2.nii", raw, slope=0.25, inter=-3.0)
    write_nifti(tmp_path / "c_seg.nii", labels.astype(np.float32))  # float mask of whole numbers
    volume = load_volume(CaseRecord("c", "t2", tmp_path / "c_t2.nii", tmp_path / "c_seg.nii"))
    np.testing.assert_allclose(volume.image, raw * 0.25 - 3.0)
    assert volume.image.dtype == np.float32
    np.testing.assert_array_equal(volume.labels, labels)


def test_near_integer_mask_is_rounded_and_trailing_singleton_accepted(
    brats2021_root: Path, make_phantom: Phantom, write_nifti: WriteNifti
) -> None:
    record = _record(brats2021_root)
    _, labels = make_phantom(0)
    write_nifti(record.mask, labels.astype(np.float32) + 4e-4)
    image = nib.load(record.image).get_fdata()
    write_nifti(record.image, image[..., None])  # (X, Y, Z, 1)
    volume = load_volume(discover(brats2021_root)[0])
    np.testing.assert_array_equal(volume.labels, labels)
    assert volume.image.shape == labels.shape


# ----------------------------------------------------------------------------- bad input


def test_truncated_header_and_non_nifti_fail_discovery(brats2021_root: Path) -> None:
    record = _record(brats2021_root)
    record.image.write_bytes(record.image.read_bytes()[:40])
    _raises(lambda: discover(brats2021_root), "BraTS2021_00000_t2.nii.gz", "NIfTI")
    record.image.write_text("patient,site\n")
    _raises(lambda: discover(brats2021_root), "BraTS2021_00000_t2.nii.gz", "NIfTI")


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_truncated_data_fails_load(
    tmp_path: Path, ext: str, make_phantom: Phantom, write_nifti: WriteNifti
) -> None:
    image, labels = make_phantom(0)
    path = write_nifti(tmp_path / f"c_t2{ext}", image)
    mask = write_nifti(tmp_path / f"c_seg{ext}", labels)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) * 2 // 3])
    record = discover_one(tmp_path, path, mask)
    _raises(lambda: load_volume(record), f"c_t2{ext}", "truncated")


def discover_one(folder: Path, image: Path, mask: Path) -> CaseRecord:
    """The record of a one-row manifest (discovery's header checks pass on truncated data)."""
    manifest = folder / "manifest.csv"
    manifest.write_text(f"patient,site,modality,image,mask\nc,s,t2,{image.name},{mask.name}\n")
    (record,) = discover(manifest)
    return record


def test_shape_and_affine_mismatch(
    brats2021_root: Path, make_phantom: Phantom, write_nifti: WriteNifti
) -> None:
    record = _record(brats2021_root)
    _, labels = make_phantom(0)
    write_nifti(record.mask, labels[:, :, :-1])
    _raises(lambda: discover(brats2021_root), "BraTS2021_00000_seg.nii.gz", "shape")
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    write_nifti(record.mask, labels, shifted)
    _raises(lambda: discover(brats2021_root), "BraTS2021_00000_seg.nii.gz", "affine")
    _raises(lambda: load_volume(record), "BraTS2021_00000_seg.nii.gz", "affine")
    shifted[0, 3] = 1e-5  # float rounding is tolerated
    write_nifti(record.mask, labels, shifted)
    assert len(discover(brats2021_root)) == 4


def test_missing_modality_and_missing_mask(brats2021_root: Path) -> None:
    case = brats2021_root / "BraTS2021_00001"
    shutil.copy(case / "BraTS2021_00001_t2.nii.gz", case / "BraTS2021_00001_t2.nii")
    _raises(lambda: discover(brats2021_root), "BraTS2021_00001", "more than one")
    (case / "BraTS2021_00001_t2.nii").unlink()
    (case / "BraTS2021_00001_flair.nii.gz").unlink()
    _raises(lambda: discover(brats2021_root), "BraTS2021_00001", "flair")
    (case / "BraTS2021_00001_seg.nii.gz").unlink()
    _raises(lambda: discover(brats2021_root), "BraTS2021_00001", "mask")


def test_missing_msd_label_and_channel(msd_root: Path) -> None:
    (msd_root / "labelsTr" / "BRATS_002.nii.gz").unlink()
    _raises(lambda: discover(msd_root), "BRATS_002.nii.gz", "missing mask")
    (msd_root / "dataset.json").write_text('{"modality": {"0": "FLAIR", "1": "T1w"}}')
    _raises(lambda: discover(msd_root), "dataset.json", "t2")


def test_msd_image_must_hold_the_channel(
    msd_root: Path, make_phantom: Phantom, write_nifti: WriteNifti
) -> None:
    image, _ = make_phantom(1)
    write_nifti(msd_root / "imagesTr" / "BRATS_001.nii.gz", np.stack([image, image], axis=-1))
    _raises(lambda: discover(msd_root), "BRATS_001.nii.gz", "channel 3")


@pytest.mark.parametrize(
    ("value", "problem"),
    [(3, "unexpected label value(s) [3]"), (1.5, "not integers"), (-1, "outside 0..255")],
)
def test_bad_label_values(
    brats2021_root: Path, value: float, problem: str, make_phantom: Phantom, write_nifti: WriteNifti
) -> None:
    record = _record(brats2021_root)
    _, labels = make_phantom(0)
    bad = labels.astype(np.float32 if value == 1.5 else np.int16)
    bad[0, 0, 0] = value
    write_nifti(record.mask, bad)
    _raises(lambda: load_volume(record), "BraTS2021_00000_seg.nii.gz", problem)


def test_gli_rejects_a_label_outside_its_set(brats2023_root: Path, write_nifti: WriteNifti) -> None:
    record = discover(brats2023_root)[0]
    labels = nib.load(record.mask).get_fdata().astype(np.uint8)
    labels[0, 0, 0] = 5
    write_nifti(record.mask, labels)
    _raises(lambda: load_volume(record), "BraTS-GLI-00000-000-seg.nii.gz", "[5]")


@pytest.mark.parametrize(
    ("value", "problem"), [(np.nan, "NaN"), (np.inf, "infinite"), ("zeros", "constant")]
)
def test_bad_image_voxels(
    brats2021_root: Path,
    value: object,
    problem: str,
    make_phantom: Phantom,
    write_nifti: WriteNifti,
) -> None:
    record = _record(brats2021_root)
    image, _ = make_phantom(0)
    if value == "zeros":
        image[:] = 0
    else:
        image[5, 5, 5] = value
    write_nifti(record.image, image)
    _raises(lambda: load_volume(record), "BraTS2021_00000_t2.nii.gz", problem)
    write_nifti(record.image, np.full(image.shape, 7.0, np.float32))
    _raises(lambda: load_volume(record), "BraTS2021_00000_t2.nii.gz", "constant")


def test_four_d_where_three_d_expected(
    brats2021_root: Path, make_phantom: Phantom, write_nifti: WriteNifti
) -> None:
    record = _record(brats2021_root)
    image, _ = make_phantom(0)
    write_nifti(record.image, np.stack([image, image], axis=-1))
    _raises(lambda: discover(brats2021_root), "BraTS2021_00000_t2.nii.gz", "3-D")
    _raises(lambda: load_volume(record), "BraTS2021_00000_t2.nii.gz", "3-D")


def test_manifest_row_pointing_nowhere(manifest_csv: Path) -> None:
    text = manifest_csv.read_text().replace("p1/p1_seg.nii.gz", "p1/missing_seg.nii.gz", 1)
    manifest_csv.write_text(text)
    _raises(lambda: discover(manifest_csv), "manifest.csv", "row 3", "missing_seg.nii.gz")


def test_manifest_unknown_modality(manifest_csv: Path) -> None:
    manifest_csv.write_text(manifest_csv.read_text().replace(",FLAIR,", ",dwi,", 1))
    _raises(lambda: discover(manifest_csv), "manifest.csv", "row 2", "'dwi'")


def test_manifest_missing_columns(manifest_csv: Path) -> None:
    lines = manifest_csv.read_text().splitlines()
    lines[0] = lines[0].replace("mask", "label").replace("site", "hospital")
    manifest_csv.write_text("\n".join(lines))
    _raises(lambda: discover(manifest_csv), "manifest.csv", "site, mask")


def test_case_folder_and_layout_problems(
    brats2021_root: Path, tmp_path: Path, make_phantom: Phantom, write_nifti: WriteNifti
) -> None:
    _raises(lambda: discover(tmp_path / "nowhere"), "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises(lambda: discover(empty), "empty", "layout")
    _raises(lambda: discover(brats2021_root, layout="brats2019"), "brats2019")
    _raises(lambda: discover(brats2021_root, layout="brats2023"), "BraTS2021_00000", "BraTS-GLI-")
    image, _ = make_phantom(0)
    write_nifti(brats2021_root / "stray_t2.nii.gz", image)
    _raises(lambda: discover(brats2021_root), "stray_t2.nii.gz", "outside a case folder")


def test_folder_without_nifti_is_reported_not_dropped_quietly(
    brats2021_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (brats2021_root / "BraTS2021_00009").mkdir()
    with caplog.at_level(logging.WARNING, logger="fedll.data.layouts"):
        records = discover(brats2021_root)
    assert len(records) == 4 and "BraTS2021_00009" in caplog.text


def test_tcga_records_prefer_the_manually_corrected_labels(
    tcga_root: Path, make_phantom: Phantom
) -> None:
    records = discover(tcga_root)  # auto finds it by the GlistrBoost labels
    assert records == discover(tcga_root, layout="tcga-gbm")
    assert [(r.patient, r.modality) for r in records] == [
        ("TCGA-02-0006", "t2"),
        ("TCGA-02-0006", "flair"),
        ("TCGA-08-0509", "t2"),
        ("TCGA-08-0509", "flair"),
    ]
    assert records[0].image.name == "TCGA-02-0006_1996.08.23_t2.nii.gz"
    assert records[1].mask.name == "TCGA-02-0006_1996.08.23_GlistrBoost_ManuallyCorrected.nii.gz"
    assert records[2].mask.name == "TCGA-08-0509_1996.08.23_GlistrBoost.nii.gz"  # none corrected
    _, labels = make_phantom(0)
    np.testing.assert_array_equal(load_volume(records[0]).labels, labels)  # with label 4
    assert set(np.unique(load_volume(records[2]).labels)) == {0, 1, 2, 4}


def test_tcga_lgg_cases_read_alike(tmp_path: Path, make_tcga_case: Callable[..., Path]) -> None:
    make_tcga_case(tmp_path / "lgg", "TCGA-CS-4941", seed=2, corrected=False)
    assert [r.patient for r in discover(tmp_path / "lgg")] == ["TCGA-CS-4941"] * 2


def test_tcga_problems_are_one_line_each(
    tcga_root: Path, write_nifti: WriteNifti, make_phantom: Phantom
) -> None:
    case = tcga_root / "TCGA-08-0509"
    (case / "TCGA-08-0509_1996.08.23_flair.nii.gz").unlink()
    _raises(lambda: discover(tcga_root), "TCGA-08-0509", "missing flair image")
    (case / "TCGA-08-0509_1996.08.23_GlistrBoost.nii.gz").unlink()
    _raises(lambda: discover(tcga_root, layout="tcga-gbm"), "TCGA-08-0509", "missing mask")
    image, labels = make_phantom(3)
    other = tcga_root / "BraTS2021_00000"
    write_nifti(other / "BraTS2021_00000_t2.nii.gz", image)
    _raises(lambda: discover(tcga_root, layout="tcga-gbm"), "BraTS2021_00000", "'TCGA-'")
    labels[0, 0, 0] = 3  # not a BraTS 2017 label
    stem = tcga_root / "TCGA-02-0006" / "TCGA-02-0006_1996.08.23"
    bad = Path(f"{stem}_GlistrBoost_ManuallyCorrected.nii.gz")
    write_nifti(bad, labels)
    record = CaseRecord("TCGA-02-0006", "t2", Path(f"{stem}_t2.nii.gz"), bad)
    _raises(lambda: load_volume(record), bad.name)
