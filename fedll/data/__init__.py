"""Cohorts: synthetic glioma phantoms, real NIfTI layouts, and 2-D slice preprocessing.

- :mod:`~fedll.data.phantom`, :mod:`~fedll.data.scanner`, :mod:`~fedll.data.cohort`,
  :mod:`~fedll.data.preview`: the synthetic multi-site cohort;
- :mod:`~fedll.data.layouts` (discovery of BraTS, MSD and manifest cohorts),
  :mod:`~fedll.data.manifest` (the CSV manifest) and :mod:`~fedll.data.nifti` (reading and
  validating one case);
- :mod:`~fedll.data.slices`: preprocessing into 2-D slices and the slice cache;
- :mod:`~fedll.data.prepare`: a scenario's cohort split into sites and test sets, once per run.
"""

from __future__ import annotations

MODALITIES: tuple[str, ...] = ("t2", "flair")
LABELS: dict[str, str] = {"t2": "T2", "flair": "FLAIR"}
"""How tables and plots name each modality."""
