"""Cohorts: synthetic glioma phantoms, real NIfTI layouts, and 2-D slice preprocessing."""

from __future__ import annotations

MODALITIES: tuple[str, ...] = ("t2", "flair")
