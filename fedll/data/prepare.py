"""Turn a scenario's cohort into sites and held-out test sets, once per run.

The cohort (synthesised into the cache, or read from disk with any supported layout) is
split into the scenario's hospitals and a test set per modality, and every volume used is
preprocessed into the slice cache, so trials (in any process) read arrays, not NIfTI.
Training cases keep the slice selection; test cases hold every brain slice when the
scenario's ``evaluation.slices`` is ``all`` (whole-volume evaluation), else the selection.
The split is written to the run directory as ``cohort.json``.

Assignment rules (deterministic):
- test patients: the cohort's ``split == "test"`` patients first, then others, in sorted
  order; the first ``k`` with a T2 volume form the T2 test set, the next ``k`` with a
  FLAIR volume the FLAIR test set (disjoint patients, as in the poster);
- each site takes training patients whose cohort site has its name first, then patients
  from the rest of the pool, in sorted order; no patient serves two sites. A site's cases
  arrive sorted by patient id, as a deployed site orders its own (:mod:`fedll.data.site`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from fedll.atomic import atomic_path
from fedll.config.schema import Scenario, SliceConfig
from fedll.data import MODALITIES
from fedll.data.layouts import discover
from fedll.data.nifti import CaseRecord
from fedll.data.slice_cache import SliceCache, load_slices
from fedll.data.slices import CaseSlices
from fedll.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedCohort:
    """Training records per site, test records per modality, and how to slice them.

    evaluation_slices: ``all`` (test cases hold every brain slice) or ``selected`` (the
    training selection; what a cohort.json of an earlier fedll, without the key, held).
    digests: ``train:<patient>:<modality>`` and ``test:<patient>:<modality>`` -> the SHA-256
    of the case's slices (:func:`slices_digest`), the bytes the trials read (empty in a
    cohort.json of an earlier fedll)."""

    sites: dict[str, tuple[CaseRecord, ...]]
    test: dict[str, tuple[CaseRecord, ...]]
    spec: SliceConfig
    cache_dir: Path
    evaluation_slices: str = "selected"
    digests: dict[str, str] = field(default_factory=dict)

    def cache(self) -> SliceCache:
        return SliceCache(self.cache_dir / "slices")

    def site_slices(self, site: str) -> list[CaseSlices]:
        return load_slices(list(self.sites[site]), self.spec, self.cache())

    def test_slices(self, modality: str) -> list[CaseSlices]:
        every_slice = self.evaluation_slices == "all"
        return load_slices(
            list(self.test[modality]), self.spec, self.cache(), every_slice=every_slice
        )

    def to_json(self) -> str:
        def rec(r: CaseRecord) -> dict:
            d = asdict(r)
            d["image"], d["mask"] = str(r.image), str(r.mask)
            return d

        return json.dumps(
            {
                "sites": {s: [rec(r) for r in rs] for s, rs in self.sites.items()},
                "test": {m: [rec(r) for r in rs] for m, rs in self.test.items()},
                "spec": self.spec.model_dump(),
                "cache_dir": str(self.cache_dir),
                "evaluation_slices": self.evaluation_slices,
                "digests": self.digests,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> PreparedCohort:
        data = json.loads(text)

        def rec(d: dict) -> CaseRecord:
            return CaseRecord(**{**d, "image": Path(d["image"]), "mask": Path(d["mask"])})

        return cls(
            sites={s: tuple(rec(d) for d in rs) for s, rs in data["sites"].items()},
            test={m: tuple(rec(d) for d in rs) for m, rs in data["test"].items()},
            spec=SliceConfig(**data["spec"]),
            cache_dir=Path(data["cache_dir"]),
            evaluation_slices=str(data.get("evaluation_slices", "selected")),
            digests={str(k): str(v) for k, v in data.get("digests", {}).items()},
        )

    def write(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(self.to_json())

    @classmethod
    def read(cls, path: Path) -> PreparedCohort:
        """The split written to ``path``; DataError (naming it) when it cannot be read."""
        try:
            return cls.from_json(Path(path).read_text())
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(
                f"{path}: not a readable cohort split ({type(error).__name__}); delete it and "
                "the run prepares the cohort again"
            ) from None


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fedll`` (``~/.cache/fedll``): cohorts and slices shared by runs."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "fedll"


def synthetic_cohort_dir(scenario: Scenario, cache_dir: Path) -> Path:
    """Where the scenario's synthetic cohort lives in the cache (keyed by its arguments)."""
    from fedll.data.cohort import generate_cohort

    assert scenario.cohort.synthetic is not None
    sites = [s.name for s in scenario.sites]
    patients = scenario.synthetic_patients()
    test_patients = 2 * scenario.test.patients_per_modality
    synthetic = scenario.cohort.synthetic
    shape = {"shape": tuple(synthetic.shape)} if synthetic.shape is not None else {}
    key = json.dumps(
        {
            "patients": patients,
            "sites": sites,
            "seed": synthetic.seed,
            "test": test_patients,
            "v": 1,
            **shape,
        },
        sort_keys=True,
    )
    out = cache_dir / "cohorts" / hashlib.sha1(key.encode()).hexdigest()[:16]
    manifest = out / "manifest.csv"
    if not manifest.exists():
        logger.info("synthesising %d patients into %s", patients, out)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        # a process pool pays off past a few dozen patients (same bytes for any worker count)
        workers = min(os.cpu_count() or 1, 8) if patients >= 24 else 1
        generate_cohort(
            tmp,
            patients=patients,
            sites=sites,
            seed=synthetic.seed,
            test_patients=test_patients,
            workers=workers,
            **shape,
        )
        if out.exists():  # another process won the race; keep its copy
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, out)
    return out


def split_cohort(records: list[CaseRecord], scenario: Scenario, source: str) -> tuple[dict, dict]:
    """Assign records to the scenario's sites and per-modality test sets (see module doc)."""
    by_patient: dict[str, dict[str, CaseRecord]] = defaultdict(dict)
    for r in records:
        by_patient[r.patient][r.modality] = r
    patients = sorted(by_patient)
    test_first = [p for p in patients if any(r.split == "test" for r in by_patient[p].values())]
    order = test_first + [p for p in patients if p not in set(test_first)]
    k = scenario.test.patients_per_modality
    used: set[str] = set()
    test: dict[str, tuple[CaseRecord, ...]] = {}
    for modality in MODALITIES:
        chosen = [p for p in order if p not in used and modality in by_patient[p]][:k]
        if len(chosen) < k:
            raise ConfigError(
                f"{source}: test.patients_per_modality: {k} {modality} test patients asked, "
                f"the cohort has {len(chosen)} left"
            )
        used.update(chosen)
        test[modality] = tuple(by_patient[p][modality] for p in chosen)
    sites: dict[str, tuple[CaseRecord, ...]] = {}
    for i, site in enumerate(scenario.sites):
        from_this_site = [
            p
            for p in patients
            if p not in used
            and site.modality in by_patient[p]
            and by_patient[p][site.modality].site == site.name
        ]
        from_no_scenario_site = [
            p
            for p in patients
            if p not in used
            and p not in set(from_this_site)
            and site.modality in by_patient[p]
            and by_patient[p][site.modality].site not in {s.name for s in scenario.sites}
        ]
        chosen = (from_this_site + from_no_scenario_site)[: site.patients]
        if len(chosen) < site.patients:
            raise ConfigError(
                f"{source}: sites.{i}.patients: {site.name} asks for {site.patients} "
                f"{site.modality} patients, the cohort has {len(chosen)} left for it"
            )
        used.update(chosen)
        sites[site.name] = tuple(by_patient[p][site.modality] for p in sorted(chosen))
    return sites, test


def prepare_cohort(
    scenario: Scenario, cache_dir: Path | None = None, source: str = "<scenario>"
) -> PreparedCohort:
    """Build or read the cohort, split it, and fill the slice cache for every case used."""
    cache_dir = Path(scenario.cache_dir or cache_dir or default_cache_dir())
    if cache_dir.exists() and not cache_dir.is_dir():
        raise DataError(f"cache_dir: {cache_dir} is a file, not a directory")
    cache_dir.mkdir(parents=True, exist_ok=True)
    if scenario.cohort.synthetic is not None:
        root, layout = synthetic_cohort_dir(scenario, cache_dir), "manifest"
    else:
        assert scenario.cohort.path is not None
        root, layout = scenario.cohort.path, scenario.cohort.layout
    records = discover(root, layout)
    sites, test = split_cohort(records, scenario, source)
    spec = scenario.slices
    prepared = PreparedCohort(
        sites=sites,
        test=test,
        spec=spec,
        cache_dir=cache_dir,
        evaluation_slices=scenario.evaluation.slices,
    )
    training = [r for rs in sites.values() for r in rs]
    testing = [r for rs in test.values() for r in rs]
    logger.info("preprocessing %d volumes into the slice cache", len(training) + len(testing))
    digests = {}
    for record, cases in zip(training, load_slices(training, spec, prepared.cache()), strict=True):
        if len(cases.images) == 0:
            raise DataError(
                f"{record.image}: gives no training slice (no tumour slice, and "
                f"slices.empty_fraction {spec.empty_fraction} adds none); drop the case"
            )
        digests[f"train:{record.patient}:{record.modality}"] = slices_digest(cases)
    every_slice = prepared.evaluation_slices == "all"
    test_slices = load_slices(testing, spec, prepared.cache(), every_slice=every_slice)
    for record, cases in zip(testing, test_slices, strict=True):
        if not np.asarray(cases.masks).any():
            raise DataError(
                f"{record.mask}: no tumour is left after slicing at {spec.size} px, so the test "
                "case cannot be scored; drop the case or raise slices.size"
            )
        digests[f"test:{record.patient}:{record.modality}"] = slices_digest(cases)
    return replace(prepared, digests=digests)


def slices_digest(cases: CaseSlices) -> str:
    """The SHA-256 of a case's slices: images, masks, slice indices and spacing."""
    digest = hashlib.sha256()
    for array in (cases.images, cases.masks, cases.indices):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps(list(cases.spacing)).encode())
    return digest.hexdigest()


def cohort_for(run_dir: Path, scenario: Scenario, source: str = "<scenario>") -> PreparedCohort:
    """The run's prepared cohort: ``RUN_DIR/cohort.json`` when a sweep (or an earlier trial)
    wrote it (with the scenario's ``evaluation.slices``), else prepared now and written there.

    A split whose files are gone (a run directory cloned to another machine, a cleared
    cache) is prepared again from the scenario (a synthetic cohort is synthesised anew) and
    kept only if it assigns the same cases to the same sites and test sets; otherwise the
    run's finished trials were computed on other data, and DataError says so."""
    index = Path(run_dir) / "cohort.json"
    if index.exists():
        prepared = PreparedCohort.read(index)
        if prepared.evaluation_slices != scenario.evaluation.slices:
            logger.info("%s holds other test slices; preparing again", index)
            return _prepare_into(index, scenario, source)
        missing = next((path for path in _files(prepared) if not path.is_file()), None)
        if missing is None:
            return prepared
        if scenario.cohort.synthetic is None and not Path(scenario.cohort.path or "").exists():
            raise DataError(f"{missing}: listed in {index} but missing")
        logger.warning("%s: listed in %s but missing; preparing the cohort again", missing, index)
        prepared_again = prepare_cohort(scenario, source=source)
        if (difference := split_difference(prepared, prepared_again)) is not None:
            raise DataError(
                f"{index}: {missing} is missing, and the cohort prepared again differs "
                f"({difference}); the run's trials used other data: start a new run directory"
            )
        _warn_if_other_bytes(index, prepared, prepared_again)
        prepared_again.write(index)
        return prepared_again
    return _prepare_into(index, scenario, source)


def _warn_if_other_bytes(index: Path, old: PreparedCohort, new: PreparedCohort) -> None:
    """One warning when the slices prepared again are not the bytes the run's kept trials
    read (or cannot be checked): on a machine of other arithmetic (fedll.run.device) a synthetic
    cohort differs in its last bits, and the kept trials and those run now then agree in
    distribution, not bit for bit."""
    if not old.digests:
        logger.warning(
            "%s holds no digests of its slices (an earlier fedll): whether the cohort prepared "
            "again has the same bytes as the kept trials' cannot be checked",
            index,
        )
        return
    changed_cases = sorted(k for k, v in new.digests.items() if old.digests.get(k) != v)
    if changed_cases:
        logger.warning(
            "%s: the cohort prepared again differs from the run's in %d of %d cases' slices "
            "(first %s; another machine's arithmetic?): the kept trials stay, and agree with the "
            "trials run now in distribution, not bit for bit", index, len(changed_cases),
            len(new.digests), changed_cases[0],
        )  # fmt: skip


def _files(prepared: PreparedCohort) -> list[Path]:
    records = [r for rs in (*prepared.sites.values(), *prepared.test.values()) for r in rs]
    return [Path(p) for r in records for p in (r.image, r.mask)]


def split_difference(old: PreparedCohort, new: PreparedCohort) -> str | None:
    """The first way two splits assign cases differently (which patient, modality, source
    site, split and channel each site and test set holds, and the slice recipe), or None
    when they agree; file locations may differ."""

    def cases(records: tuple[CaseRecord, ...]) -> list[tuple]:
        return [(r.patient, r.modality, r.site, r.split, r.channel) for r in records]

    for part, before, after in (("sites", old.sites, new.sites), ("test", old.test, new.test)):
        if list(before) != list(after):
            return f"{part}: {sorted(before)} before, {sorted(after)} now"
        for name in before:
            if cases(before[name]) != cases(after[name]):
                patients_before = [c[0] for c in cases(before[name])]
                patients_now = [c[0] for c in cases(after[name])]
                return f"{part}.{name}: {patients_before} before, {patients_now} now"
    if old.spec != new.spec:
        return "slices: another slice recipe"
    return None


def _prepare_into(index: Path, scenario: Scenario, source: str) -> PreparedCohort:
    prepared = prepare_cohort(scenario, source=source)
    index.parent.mkdir(parents=True, exist_ok=True)
    prepared.write(index)
    return prepared
