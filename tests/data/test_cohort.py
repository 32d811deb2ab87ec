"""Cohort writing end to end: NIfTI files, manifest, seeding, argument errors, preview."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedll.data.cohort import (
    default_test_patients,
    generate_cohort,
    plan_cohort,
    site_scanner,
)
from fedll.data.manifest import MANIFEST_COLUMNS
from fedll.data.phantom import Atlas, load_atlas
from fedll.data.preview import write_preview
from fedll.errors import ConfigError, DataError, FedllError

SHAPE = (40, 47, 37)  # 4.8 mm voxels
SITES = ["A", "B", "C"]


@pytest.fixture(scope="module")
def atlas() -> Atlas:
    return load_atlas()


@pytest.fixture(scope="module")
def cohort(atlas: Atlas, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort") / "syn"
    return generate_cohort(out, 5, SITES, 7, shape=SHAPE, test_patients=2, atlas=atlas)


def rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as handle:
        return list(csv.DictReader(handle))


def stored(path: Path) -> tuple[bytes, float, np.ndarray]:
    """Raw stored bytes, scl_slope and affine of a NIfTI file."""
    nii = nib.load(path)
    return nii.dataobj.get_unscaled().tobytes(), float(nii.dataobj.slope), nii.affine


def test_manifest_is_long_with_relative_paths(cohort: Path) -> None:
    assert cohort.name == "manifest.csv"
    table = rows(cohort)
    assert tuple(table[0]) == MANIFEST_COLUMNS
    assert len(table) == 5 * 2
    assert [(r["patient"], r["modality"]) for r in table[:4]] == [
        ("SYN_0000", "t2"),
        ("SYN_0000", "flair"),
        ("SYN_0001", "t2"),
        ("SYN_0001", "flair"),
    ]
    for row in table:
        case = row["patient"]
        assert row["image"] == f"{case}/{case}_{row['modality']}.nii.gz"
        assert row["mask"] == f"{case}/{case}_seg.nii.gz"
        assert (cohort.parent / row["image"]).is_file()
    sites = {r["patient"]: r["site"] for r in table}
    assert sites == {f"SYN_000{i}": SITES[i % 3] for i in range(5)}  # round-robin
    test = {r["patient"] for r in table if r["split"] == "test"}
    assert len(test) == 2 and len({sites[p] for p in test}) == 2  # spread over sites
    assert {r["split"] for r in table} == {"train", "test"}


def test_nifti_files_are_brats_2021_cases(cohort: Path) -> None:
    root = cohort.parent
    for case in sorted(p.name for p in root.iterdir() if p.is_dir()):
        t2, flair, seg = (
            nib.load(root / case / f"{case}_{m}.nii.gz") for m in ("t2", "flair", "seg")
        )
        assert t2.shape == flair.shape == seg.shape == SHAPE
        np.testing.assert_allclose(t2.affine, flair.affine)
        np.testing.assert_allclose(t2.affine, seg.affine)
        assert nib.aff2axcodes(t2.affine) == ("R", "A", "S")
        assert t2.header.get_zooms() == pytest.approx((4.8, 4.8, 4.8))
        for image in (t2, flair):  # int16 with a real scale factor, as scanners export
            assert image.get_data_dtype() == np.int16 and image.dataobj.slope != 1.0
            data = image.get_fdata()
            assert data.min() >= 0 and data.max() > 0
        labels = np.asarray(seg.dataobj)
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 4}
        assert (labels > 0).any(), f"{case} has no tumour"


def test_cohort_json_records_distinct_site_scanners(cohort: Path) -> None:
    meta = json.loads((cohort.parent / "cohort.json").read_text())
    assert meta["seed"] == 7 and meta["sites"] == SITES and meta["shape"] == list(SHAPE)
    scanners = [json.dumps(meta["scanners"][s], sort_keys=True) for s in SITES]
    assert len(set(scanners)) == len(SITES)
    assert meta["scanners"]["A"]["flair"]["ti"] != meta["scanners"]["B"]["flair"]["ti"]
    # a site's scanner depends on its name, not on its position in the list
    assert site_scanner(7, "B") == site_scanner(7, "B")
    assert site_scanner(7, "B") != site_scanner(8, "B")


def test_same_seed_same_bytes_whatever_the_workers(
    cohort: Path, atlas: Atlas, tmp_path: Path
) -> None:
    again = generate_cohort(
        tmp_path / "again", 5, SITES, 7, shape=SHAPE, test_patients=2, workers=2, atlas=atlas
    )
    assert again.read_text() == cohort.read_text()
    for row in rows(cohort):
        for key in ("image", "mask"):
            first, second = stored(cohort.parent / row[key]), stored(again.parent / row[key])
            assert first[:2] == second[:2]
            np.testing.assert_array_equal(first[2], second[2])


def test_another_seed_gives_other_patients(cohort: Path, atlas: Atlas, tmp_path: Path) -> None:
    other = generate_cohort(tmp_path / "other", 3, SITES, 8, shape=SHAPE, atlas=atlas)
    case = "SYN_0000/SYN_0000_t2.nii.gz"
    assert stored(cohort.parent / case)[0] != stored(other.parent / case)[0]


def test_overwrite_replaces_a_previous_cohort(atlas: Atlas, tmp_path: Path) -> None:
    out = tmp_path / "syn"
    generate_cohort(out, 4, ["A"], 0, shape=SHAPE, atlas=atlas)
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="out: .* is not empty"):
        generate_cohort(out, 2, ["A"], 0, shape=SHAPE, atlas=atlas)
    generate_cohort(out, 2, ["A"], 0, shape=SHAPE, overwrite=True, atlas=atlas)
    assert sorted(p.name for p in out.iterdir()) == [
        "SYN_0000",
        "SYN_0001",
        "cohort.json",
        "manifest.csv",
        "notes.txt",
    ]


def test_plan_spreads_test_patients_and_keeps_a_training_patient_per_site() -> None:
    plans = plan_cohort(7, SITES, 0, 3)
    assert [p.site for p in plans] == ["A", "B", "C", "A", "B", "C", "A"]
    assert sorted(p.site for p in plans if p.split == "test") == SITES
    plans = plan_cohort(7, SITES, 0, 4)  # A has 3 patients: it gives the fourth
    assert sorted(p.site for p in plans if p.split == "test") == ["A", "A", "B", "C"]
    assert plan_cohort(7, SITES, 0, 4) == plans
    assert plan_cohort(30, SITES, 0, 4) != plan_cohort(30, SITES, 1, 4)
    assert default_test_patients(130) == 20 and default_test_patients(2) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"patients": 0}, ConfigError, "patients"),
        ({"patients": 2.5}, ConfigError, "patients"),
        ({"sites": []}, ConfigError, "sites"),
        ({"sites": "A,B"}, ConfigError, "sites"),
        ({"sites": ["A", "A"]}, ConfigError, "sites"),
        ({"sites": ["A", "b/c"]}, ConfigError, "sites"),
        ({"patients": 2, "sites": ["A", "B", "C"]}, ConfigError, "patients"),
        ({"test_patients": 4}, ConfigError, "test_patients"),
        ({"test_patients": -1}, ConfigError, "test_patients"),
        ({"seed": -1}, ConfigError, "seed"),
        ({"shape": (8, 8, 8)}, ConfigError, "shape"),
        ({"shape": (40, 40)}, ConfigError, "shape"),
        ({"shape": 64}, ConfigError, "shape"),
        ({"workers": 0}, ConfigError, "workers"),
    ],
)
def test_bad_arguments_name_the_argument(
    tmp_path: Path, kwargs: dict, error: type[FedllError], names: str
) -> None:
    arguments = {"out": tmp_path / "syn", "patients": 4, "sites": ["A"], "seed": 0, **kwargs}
    with pytest.raises(error) as raised:
        generate_cohort(**arguments)
    message = str(raised.value)
    assert message.startswith(f"{names}:") and "\n" not in message
    assert not (tmp_path / "syn").exists()


def test_out_that_is_a_file_is_a_data_error(tmp_path: Path) -> None:
    out = tmp_path / "file.txt"
    out.write_text("x")
    with pytest.raises(DataError, match=r"^out: .*file\.txt is a file"):
        generate_cohort(out, 2, ["A"], 0)


def test_preview_montage(cohort: Path, tmp_path: Path) -> None:
    png = write_preview(cohort.parent, tmp_path / "preview" / "cohort.png", cases=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DataError, match="no manifest.csv"):
        write_preview(tmp_path, tmp_path / "x.png")
