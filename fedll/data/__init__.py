"""Cohorts: synthetic glioma phantoms, real NIfTI layouts, and 2-D slice preprocessing.

- :mod:`~fedll.data.phantom`, :mod:`~fedll.data.scanner`, :mod:`~fedll.data.cohort`,
  :mod:`~fedll.data.preview`: the synthetic multi-site cohort;
- :mod:`~fedll.data.layouts` (discovery of BraTS, MSD and manifest cohorts),
  :mod:`~fedll.data.manifest` (the CSV manifest) and :mod:`~fedll.data.nifti` (reading and
  validating one case);
- :mod:`~fedll.data.slices`: preprocessing into 2-D slices; :mod:`~fedll.data.slice_cache`:
  the slice cache and loading many records' slices;
- :mod:`~fedll.data.prepare`: a scenario's cohort split into sites and test sets, once per run.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

MODALITIES: tuple[str, ...] = ("t2", "flair")
LABELS: dict[str, str] = {"t2": "T2", "flair": "FLAIR"}
"""How tables and plots name each modality."""
MAX_PATIENTS = 20_000
"""More patients than any public glioma cohort holds: a bound, so that a typo (a trillion
patients) is refused instead of exhausting memory while the stream is checked."""
MAX_SITES = 1_000
"""More hospitals than any federation fedll simulates (each is a Flower node)."""


def modality_indices(names: Iterable[str]) -> np.ndarray:
    """int64 (N,): the index in :data:`MODALITIES` of each modality name (what a model that
    routes by modality is given); ValueError names an unknown one."""
    names = list(names)
    unknown = sorted({n for n in names if n not in MODALITIES})
    if unknown:
        raise ValueError(f"modality: {unknown[0]!r} is not one of {', '.join(MODALITIES)}")
    return np.array([MODALITIES.index(n) for n in names], dtype=np.int64)
