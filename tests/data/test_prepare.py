"""The split of a cohort into the scenario's sites and test sets (``fedll.data.prepare``)."""

from __future__ import annotations

from pathlib import Path

from fedll.config import load_scenario
from fedll.data.nifti import CaseRecord
from fedll.data.prepare import split_cohort


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
