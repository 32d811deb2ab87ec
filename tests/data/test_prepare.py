"""The split of a cohort into the scenario's sites and test sets (``fedll.data.prepare``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def _slices(prepared) -> list:
    from fedll.data.arrays import CohortArrays

    arrays = CohortArrays.load(prepared)
    cases = [c for s in arrays.sites for c in s.slices] + [
        c for m in sorted(arrays.test) for c in arrays.test[m]
    ]
    return [(c.patient, c.modality, c.images, c.masks, c.indices) for c in cases]


def test_a_run_whose_synthetic_cohort_is_gone_synthesises_it_again(tmp_path, make_scenario, caplog):
    """A run directory cloned to a machine without its cache (cohort.json names files that are
    not there) synthesises the cohort anew, checks it is the same split, re-points
    cohort.json, and gives the very same slices."""
    import shutil

    from fedll.data.prepare import PreparedCohort, cohort_for

    cache = tmp_path / "cache"
    scenario = load_scenario(make_scenario(tmp_path / "s.yaml", {"cache_dir": str(cache)}))
    run_dir = tmp_path / "run"
    before = cohort_for(run_dir, scenario)
    slices_before = _slices(before)
    shutil.rmtree(cache)

    with caplog.at_level("WARNING"):
        again = cohort_for(run_dir, scenario)

    assert "but missing; preparing the cohort again" in caplog.text
    assert "differs from the run's" not in caplog.text  # the same bytes: no warning
    assert again.digests == before.digests and len(again.digests) == 6  # 2 + 2 train, 1 + 1 test
    assert all(p.is_file() for rs in again.sites.values() for r in rs for p in (r.image, r.mask))
    assert PreparedCohort.read(run_dir / "cohort.json").to_json() == again.to_json()
    after = _slices(again)
    assert [c[:2] for c in after] == [c[:2] for c in slices_before]
    for (_, _, *b), (_, _, *a) in zip(slices_before, after, strict=True):
        for x, y in zip(b, a, strict=True):
            np.testing.assert_array_equal(x, y)


def test_a_run_whose_files_are_gone_and_whose_split_differs_is_refused(tmp_path, make_scenario):
    """cohort.json assigns a patient the scenario's cohort does not give that site: preparing
    again cannot restore the run's data, and the error names cohort.json and the site."""
    import json

    from fedll.data.prepare import cohort_for

    cache = tmp_path / "cache"
    scenario = load_scenario(make_scenario(tmp_path / "s.yaml", {"cache_dir": str(cache)}))
    run_dir = tmp_path / "run"
    cohort_for(run_dir, scenario)
    index = run_dir / "cohort.json"
    data = json.loads(index.read_text())
    site = next(iter(data["sites"]))
    data["sites"][site][0]["patient"] = "SOMEONE_ELSE"
    data["sites"][site][0]["image"] = str(tmp_path / "gone.nii.gz")
    index.write_text(json.dumps(data))

    with pytest.raises(DataError, match=rf"cohort.json: .*differs \(sites.{site}: .*SOMEONE_ELSE"):
        cohort_for(run_dir, scenario)


def test_a_run_whose_cohort_folder_is_gone_names_the_missing_file(
    tmp_path, make_scenario, write_nifti, make_phantom
):
    import shutil

    from fedll.data.prepare import cohort_for

    root = _cohort(tmp_path / "cohort", write_nifti, make_phantom, empty=set())
    scenario = _scenario(tmp_path, make_scenario, root)
    scenario = scenario.model_copy(update={"cache_dir": tmp_path / "cache"})
    cohort_for(tmp_path / "run", scenario)
    shutil.rmtree(root)
    with pytest.raises(DataError, match=r"p2/t2.nii.gz: listed in .*cohort.json but missing"):
        cohort_for(tmp_path / "run", scenario)


@pytest.mark.parametrize("kept", ["other", "none"])
def test_a_cohort_prepared_again_with_other_bytes_is_one_warning(
    kept, tmp_path, make_scenario, caplog
):
    """The kept trials read other bytes (a machine of other arithmetic synthesised them:
    here, a digest altered by hand) or cohort.json holds no digests (an earlier fedll): one
    warning says the kept and the new trials agree in distribution, or that it cannot be
    checked; the run goes on."""
    import json
    import shutil

    from fedll.data.prepare import cohort_for

    cache = tmp_path / "cache"
    scenario = load_scenario(make_scenario(tmp_path / "s.yaml", {"cache_dir": str(cache)}))
    run_dir = tmp_path / "run"
    before = cohort_for(run_dir, scenario)
    index = run_dir / "cohort.json"
    data = json.loads(index.read_text())
    first = sorted(before.digests)[0]
    if kept == "other":
        data["digests"][first] = "0" * 64
    else:
        del data["digests"]
    index.write_text(json.dumps(data))
    shutil.rmtree(cache)

    with caplog.at_level("WARNING"):
        again = cohort_for(run_dir, scenario)

    if kept == "other":
        assert f"differs from the run's in 1 of 6 cases' slices (first {first};" in caplog.text
        assert "in distribution, not bit for bit" in caplog.text
    else:
        assert "holds no digests of its slices" in caplog.text
    assert again.digests == before.digests  # cohort.json now vouches for the bytes read now
    assert json.loads(index.read_text())["digests"] == before.digests
