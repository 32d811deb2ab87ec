"""Write a synthetic multi-site glioma cohort: BraTS 2021 folders plus the long manifest.

Layout under ``out``::

    SYN_0000/SYN_0000_t2.nii.gz, SYN_0000_flair.nii.gz, SYN_0000_seg.nii.gz  (labels 0/1/2/4)
    manifest.csv   patient,site,modality,split,image,mask  (one row per patient x modality)
    cohort.json    the arguments, grid and every site's scanner profile

Seeding: patient i's generator comes from ``SeedSequence(seed, spawn_key=(0, i))``, a site's
scanner from ``SeedSequence(seed, spawn_key=(1, crc32(site)))`` and the split from
``spawn_key=(2,)``; so the bytes do not depend on ``workers`` and a site keeps its scanner
whatever its position in ``sites``.

Images are stored as int16 with a positive ``scl_slope`` (intercept 0), as scanners export
them: half the size of float32, quantisation ~1e-4 of the white-matter level (far below the
noise), and readers must apply the scaling (``get_fdata``), which real data also demands.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from fedll.data import MAX_PATIENTS, MAX_SITES, MODALITIES
from fedll.data.manifest import write_manifest
from fedll.data.phantom import DEFAULT_SHAPE, Atlas, load_atlas, output_grid, synthesize_case
from fedll.data.scanner import ScannerProfile, sample_scanner
from fedll.errors import ConfigError, DataError
from fedll.names import is_simple_name, rule_for

logger = logging.getLogger(__name__)

_INT16_TOP = 32000.0  # largest stored value; leaves headroom below 32767


@dataclass(frozen=True)
class CasePlan:
    """Who patient ``index`` is: case name, site, and split ("train" or "test")."""

    index: int
    patient: str
    site: str
    split: str


def default_test_patients(patients: int) -> int:
    """About 20 of 130, the poster's proportion (at least 1 when patients > 1)."""
    return min(patients - 1, max(1, round(patients * 20 / 130)))


def plan_cohort(
    patients: int, sites: Sequence[str], seed: int, test_patients: int
) -> tuple[CasePlan, ...]:
    """Assign patients to sites round-robin and pick test patients spread over the sites.

    Test patients are taken one site at a time (a seeded order within each site), skipping a
    site while that would leave it without a training patient and others still have spares."""
    width = max(4, len(str(patients - 1)))
    names = [f"SYN_{i:0{width}d}" for i in range(patients)]
    members = {s: [i for i in range(patients) if i % len(sites) == k] for k, s in enumerate(sites)}
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    queues = {s: [int(i) for i in rng.permutation(m)] for s, m in members.items()}
    test: set[int] = set()
    while len(test) < test_patients:
        spare = [s for s in sites if len(queues[s]) > 1] or [s for s in sites if queues[s]]
        for site in spare[: test_patients - len(test)]:
            test.add(queues[site].pop(0))
    return tuple(
        CasePlan(i, names[i], sites[i % len(sites)], "test" if i in test else "train")
        for i in range(patients)
    )


def site_scanner(seed: int, site: str) -> ScannerProfile:
    """The scanner of ``site`` in a cohort seeded ``seed`` (stable under reordering sites)."""
    key = zlib.crc32(site.encode())
    return sample_scanner(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, key))))


def patient_rng(seed: int, index: int) -> np.random.Generator:
    """Generator of patient ``index``: independent of worker count and of other patients."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, index)))


def generate_cohort(
    out: Path,
    patients: int,
    sites: Sequence[str],
    seed: int,
    *,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    test_patients: int | None = None,
    workers: int = 1,
    overwrite: bool = False,
    atlas: Atlas | None = None,
) -> Path:
    """Synthesise ``patients`` T2 + FLAIR + seg cases at ``sites`` into ``out``.

    ``shape`` is the (X, Y, Z) grid; spacing is isotropic, max(FOV / shape) with FOV
    192 x 224 x 176 mm, so the default (96, 112, 88) is 2 mm (the MNI 2-mm grid cropped to
    the head). ``test_patients`` defaults to ~20/130 of ``patients``. ``overwrite`` allows a
    non-empty ``out``; files of a previous cohort listed in its manifest are removed first.
    ``atlas`` reuses templates prepared by ``load_atlas`` (loaded here when None).
    Returns the path of ``out/manifest.csv``, written last (its presence marks a complete
    cohort). Raises ``ConfigError`` / ``DataError`` naming the bad argument."""
    out = Path(out)
    sites = _check_arguments(patients, sites, seed, shape, test_patients, workers)
    patients, seed, shape = int(patients), int(seed), tuple(int(n) for n in shape)
    tests = default_test_patients(patients) if test_patients is None else int(test_patients)
    _prepare_out(out, overwrite)
    plans = plan_cohort(patients, sites, seed, tests)
    profiles = {s: site_scanner(seed, s) for s in sites}
    start = time.perf_counter()
    atlas = load_atlas() if atlas is None else atlas
    if workers == 1:
        _write_cases(out, plans, atlas, shape, profiles, seed)
    else:
        _write_cases_in_pool(workers, out, plans, atlas, shape, profiles, seed)
    spacing, _ = output_grid(atlas, shape)
    meta = {
        "generator": "fedll.data.cohort",
        "patients": patients,
        "sites": sites,
        "seed": seed,
        "test_patients": tests,
        "shape": list(shape),
        "spacing_mm": spacing,
        "scanners": {s: asdict(p) for s, p in profiles.items()},
    }
    (out / "cohort.json").write_text(json.dumps(meta, indent=2) + "\n")
    manifest = _write_manifest(out, plans)
    logger.info(
        "wrote %d patients at %d sites to %s in %.1f s",
        patients,
        len(sites),
        out,
        time.perf_counter() - start,
    )
    return manifest


def _write_cases_in_pool(
    workers: int,
    out: Path,
    plans: Sequence[CasePlan],
    atlas: Atlas,
    shape: tuple[int, int, int],
    profiles: dict[str, ScannerProfile],
    seed: int,
) -> None:
    """:func:`_write_cases` in ``workers`` processes: interleaved chunks, two per worker; each
    chunk carries the atlas once."""
    chunks = [plans[k :: 2 * workers] for k in range(min(len(plans), 2 * workers))]
    # spawned, not forked: `fedll run` prepares the cohort while Ray's threads start
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        jobs = [
            pool.submit(_write_cases, out, chunk, atlas, shape, profiles, seed) for chunk in chunks
        ]
        for job in jobs:
            job.result()


def _check_arguments(
    patients: int,
    sites: Sequence[str],
    seed: int,
    shape: tuple[int, int, int],
    test_patients: int | None,
    workers: int,
) -> list[str]:
    def is_int(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(patients) or not 1 <= patients <= MAX_PATIENTS:
        raise ConfigError(f"patients: must be an integer in 1..{MAX_PATIENTS}, got {patients!r}")
    if isinstance(sites, str) or not isinstance(sites, Sequence):
        raise ConfigError(f"sites: expected a list of site names, got {sites!r}")
    if len(sites) > MAX_SITES:
        raise ConfigError(f"sites: at most {MAX_SITES} sites, got {len(sites)}")
    names = [str(s) for s in sites]
    if not names:
        raise ConfigError("sites: at least one site name is needed, got none")
    not_simple = [s for s in names if not is_simple_name(s)]
    if not_simple:
        raise ConfigError(
            f"sites: {not_simple[0]!r} is not a simple name ({rule_for(not_simple[0])})"
        )
    if len(set(names)) < len(names):
        raise ConfigError(f"sites: names must be unique, got {names}")
    if patients < len(names):
        raise ConfigError(f"patients: {patients} cannot fill {len(names)} sites (one each)")
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"seed: must be an integer >= 0, got {seed!r}")
    dims = tuple(shape) if isinstance(shape, Sequence) else ()
    if len(dims) != 3 or not all(is_int(n) and n >= 16 for n in dims):
        raise ConfigError(f"shape: expected three integers >= 16, got {shape!r}")
    if test_patients is not None and (not is_int(test_patients) or test_patients < 0):
        raise ConfigError(f"test_patients: must be an integer >= 0, got {test_patients!r}")
    if test_patients is not None and test_patients >= patients:
        raise ConfigError(
            f"test_patients: {test_patients} must be fewer than patients ({patients})"
        )
    if not is_int(workers) or workers < 1:
        raise ConfigError(f"workers: must be an integer >= 1, got {workers!r}")
    return names


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"out: {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(
                f"out: {out} is not empty (pass --overwrite to replace the cohort there)"
            )
        _remove_previous(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"out: cannot create {out} ({error.strerror})") from None


def _remove_previous(out: Path) -> None:
    """Delete the files a previous cohort's manifest lists (inside ``out``), then it."""
    manifest = out / "manifest.csv"
    if not manifest.is_file():
        return
    root = out.resolve()
    with manifest.open(newline="") as handle:
        for row in csv.DictReader(handle):
            for key in ("image", "mask"):
                path = (out / row.get(key, "")).resolve()
                if path.is_file() and root in path.parents:
                    path.unlink()
                    if path.parent != root and not any(path.parent.iterdir()):
                        path.parent.rmdir()
    manifest.unlink()
    (out / "cohort.json").unlink(missing_ok=True)


def _write_cases(
    out: Path,
    plans: Sequence[CasePlan],
    atlas: Atlas,
    shape: tuple[int, int, int],
    profiles: dict[str, ScannerProfile],
    seed: int,
) -> None:
    """Synthesise and write the cases of ``plans`` (a worker's share)."""
    for plan in plans:
        images, labels, affine = synthesize_case(
            atlas, shape, profiles[plan.site], patient_rng(seed, plan.index)
        )
        folder = out / plan.patient
        folder.mkdir(exist_ok=True)
        for modality in MODALITIES:
            _save_scaled(images[modality], affine, folder / f"{plan.patient}_{modality}.nii.gz")
        _save(nib.Nifti1Image(labels, affine), folder / f"{plan.patient}_seg.nii.gz")
        logger.debug("wrote %s (%s, %s)", plan.patient, plan.site, plan.split)


def _save_scaled(image: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Store float32 ``image`` (>= 0) as int16 with scl_slope = max / 32000, intercept 0."""
    slope = max(float(image.max()), 1e-6) / _INT16_TOP
    raw = np.rint(image / slope).astype(np.int16)
    nii = nib.Nifti1Image(raw, affine)
    nii.header.set_slope_inter(slope, 0.0)
    _save(nii, path)


def _save(nii: nib.Nifti1Image, path: Path) -> None:
    nii.header.set_xyzt_units("mm")
    nii.set_qform(nii.affine, code=1)
    nii.set_sform(nii.affine, code=1)
    nib.save(nii, path)


def _write_manifest(out: Path, plans: Sequence[CasePlan]) -> Path:
    return write_manifest(
        out / "manifest.csv",
        (
            (
                plan.patient,
                plan.site,
                modality,
                plan.split,
                f"{plan.patient}/{plan.patient}_{modality}.nii.gz",
                f"{plan.patient}/{plan.patient}_seg.nii.gz",
            )
            for plan in plans
            for modality in MODALITIES
        ),
    )
