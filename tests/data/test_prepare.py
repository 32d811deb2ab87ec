"""The split of a cohort into the scenario's sites and test sets (``fedll.data.prepare``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedll.config import load_scenario
from fedll.data.nifti import CaseRecord
from fedll.data.prepare import prepare_cohort, split_cohort
from fedll.errors import DataError


def record(patient: str, modality: str, site: str | None, split: str | None = None) -> CaseRecord:
    folder = Path("/cohort") / patient
    return CaseRecord(
        patient, modality, folder / f"{modality}.nii.gz", folder / "seg.nii.gz", site, split
    )


def test_a_site_takes_its_own_patients_first_and_they_arrive_sorted(tmp_path, make_scenario):
    """Site a has two patients of its own (p3, p4) and needs one from the pool (p2): it holds
    p2, p3, p4 in that order, the order a deployed site reads its own cases in."""
    scenario = load_scenario(
        make_scenario(
            tmp_path / "s.yaml",
            {
                "sites": [
                    {"name": "a", "modality": "t2", "patients": 3},
                    {"name": "b", "modality": "flair", "patients": 1},
                ]
            },
        )
    )
    records = [
        *(record("p0", m, "a", "test") for m in ("t2", "flair")),
        *(record("p1", m, "b", "test") for m in ("t2", "flair")),
        record("p2", "t2", None),
        record("p3", "t2", "a"),
        record("p4", "t2", "a"),
        record("p5", "flair", "b"),
    ]

    sites, test = split_cohort(records, scenario, "s.yaml")

    assert {m: [r.patient for r in rs] for m, rs in test.items()} == {
        "t2": ["p0"],
        "flair": ["p1"],
    }
    assert [r.patient for r in sites["a"]] == ["p2", "p3", "p4"]
    assert [r.patient for r in sites["b"]] == ["p5"]


def _cohort(root: Path, write_nifti, make_phantom, empty: set[str]) -> Path:
    """A manifest cohort of 4 patients (T2 and FLAIR each); patients in ``empty`` have an
    all-background mask."""
    rows = ["patient,site,modality,split,image,mask"]
    for i in range(4):
        image, labels = make_phantom(i)
        if f"p{i}" in empty:
            labels = labels * 0
        seg = write_nifti(root / f"p{i}" / "seg.nii.gz", labels)
        for modality in ("t2", "flair"):
            write_nifti(root / f"p{i}" / f"{modality}.nii.gz", image)
            split = "test" if i < 2 else "train"
            rows.append(f"p{i},,{modality},{split},p{i}/{modality}.nii.gz,{seg.relative_to(root)}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def _scenario(tmp_path, make_scenario, root):
    return load_scenario(
        make_scenario(
            tmp_path / "s.yaml",
            {
                "cohort": {"synthetic": None, "path": str(root)},
                "sites": [
                    {"name": "a", "modality": "t2", "patients": 1},
                    {"name": "b", "modality": "flair", "patients": 1},
                ],
                "slices": {"size": 16, "empty_fraction": 0.0},
            },
        )
    )


def test_a_test_case_without_tumour_after_slicing_is_named_at_preparation(
    tmp_path, make_scenario, write_nifti, make_phantom
):
    root = _cohort(tmp_path / "cohort", write_nifti, make_phantom, empty={"p0"})
    with pytest.raises(DataError, match=r"p0/seg.nii.gz: no tumour is left after slicing"):
        prepare_cohort(_scenario(tmp_path, make_scenario, root), cache_dir=tmp_path / "cache")


def test_a_training_case_without_slices_is_named_at_preparation(
    tmp_path, make_scenario, write_nifti, make_phantom
):
    root = _cohort(tmp_path / "cohort", write_nifti, make_phantom, empty={"p2"})
    with pytest.raises(DataError, match=r"p2/t2.nii.gz: gives no training slice"):
        prepare_cohort(_scenario(tmp_path, make_scenario, root), cache_dir=tmp_path / "cache")


def test_test_cases_hold_every_brain_slice_unless_evaluation_says_selected(
    tmp_path, make_scenario, write_nifti, make_phantom
):
    from fedll.config import EvaluationConfig
    from fedll.data.arrays import CohortArrays
    from fedll.data.prepare import PreparedCohort

    root = _cohort(tmp_path / "cohort", write_nifti, make_phantom, empty=set())
    scenario = _scenario(tmp_path, make_scenario, root)
    assert scenario.evaluation.slices == "all"  # the default
    prepared = prepare_cohort(scenario, cache_dir=tmp_path / "cache")
    assert PreparedCohort.from_json(prepared.to_json()).evaluation_slices == "all"
    whole = CohortArrays.load(prepared)
    selected = CohortArrays.load(
        prepare_cohort(
            scenario.model_copy(update={"evaluation": EvaluationConfig(slices="selected")}),
            cache_dir=tmp_path / "cache",
        )
    )
    for w, s in zip(whole.test["t2"], selected.test["t2"], strict=True):
        # the selection (empty_fraction 0) is the tumour slices; all adds tumour-free ones
        assert set(s.indices) < set(w.indices) and w.spacing == s.spacing
        assert w.masks.sum() == s.masks.sum()  # every tumour slice is in both
    assert len(whole.sites[0].slices[0].images) == len(selected.sites[0].slices[0].images)
