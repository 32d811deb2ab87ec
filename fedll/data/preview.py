"""A PNG montage of a few cases of a cohort: T2 and FLAIR through the tumour, outlined.

Reads the long manifest (``patient,site,modality,split,image,mask``) directly with nibabel, so
it works on any cohort written by ``fedll.data.cohort`` or laid out by hand in that format.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from fedll.errors import DataError

# Sub-region outlines: BraTS labels -> colour, legend name.
# Drawn in this order, so the whole-tumour outline stays on top where boundaries coincide.
_OUTLINES: tuple[tuple[tuple[int, ...], str, str], ...] = (
    ((4,), "#40c0ff", "enhancing (4)"),
    ((1, 4), "#ff4040", "core (1 + 4)"),
    ((1, 2, 4), "#ffd700", "whole tumour"),
)


def write_preview(root_or_manifest: Path, out_png: Path, cases: int = 4) -> Path:
    """Draw ``cases`` patients (one per site first) as rows of T2 | FLAIR axial slices through
    the largest tumour cross-section, tumour sub-regions outlined; returns ``out_png``.

    Draws on a bare ``Figure`` (Agg), so pyplot's global state and backend stay untouched."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    manifest = Path(root_or_manifest)
    if manifest.is_dir():
        manifest = manifest / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest}: no manifest.csv to preview")
    if cases < 1:
        raise DataError(f"cases: must be >= 1, got {cases}")
    chosen = _choose(_read(manifest), cases)
    fig = Figure(figsize=(6.4, 3.3 * len(chosen)))
    axes = fig.subplots(len(chosen), 2, squeeze=False)
    for row, (patient, site, paths) in enumerate(chosen):
        labels = _load(manifest.parent / paths["mask"]).astype(np.uint8)
        z = int(np.argmax((labels > 0).sum(axis=(0, 1))))
        for col, modality in enumerate(("t2", "flair")):
            ax = axes[row, col]
            ax.set_axis_off()
            if modality not in paths:
                continue
            image = _load(manifest.parent / paths[modality])[:, :, z]
            top = float(np.percentile(image, 99.5)) or 1.0
            ax.imshow(image.T, origin="lower", cmap="gray", vmin=0, vmax=top)
            for values, colour, _ in _OUTLINES:
                region = np.isin(labels[:, :, z], values).T
                if region.any():
                    ax.contour(region, [0.5], colors=colour, linewidths=0.8, origin="lower")
            ax.set_title(f"{patient} ({site}) {modality.upper()}  z={z}", fontsize=8)
    handles = [Line2D([], [], color=c, label=n) for _, c, n in _OUTLINES]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


def _read(manifest: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """patient -> (site, {modality: image path, "mask": mask path}), in manifest order."""
    patients: dict[str, tuple[str, dict[str, str]]] = {}
    with manifest.open(newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            try:
                patient, site = row["patient"], row["site"]
                paths = patients.setdefault(patient, (site, {}))[1]
                paths[row["modality"].lower()] = row["image"]
                paths["mask"] = row["mask"]
            except (KeyError, AttributeError) as error:
                raise DataError(f"{manifest}:{number}: missing column {error}") from None
    if not patients:
        raise DataError(f"{manifest}: no cases")
    return patients


def _choose(
    patients: dict[str, tuple[str, dict[str, str]]], cases: int
) -> list[tuple[str, str, dict[str, str]]]:
    """Up to ``cases`` patients, visiting the sites in turn so that they all show."""
    by_site: dict[str, list[str]] = {}
    for patient, (site, _) in patients.items():
        by_site.setdefault(site, []).append(patient)
    order: list[str] = []
    for depth in range(max(len(v) for v in by_site.values())):
        order += [v[depth] for v in by_site.values() if depth < len(v)]
    return [(p, patients[p][0], patients[p][1]) for p in order[:cases]]


def _load(path: Path) -> np.ndarray:
    try:
        return np.asarray(nib.as_closest_canonical(nib.load(path)).get_fdata(), np.float32)
    except (OSError, ImageFileError) as error:
        raise DataError(f"{path}: cannot read ({error})") from None
