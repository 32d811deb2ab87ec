"""The CSV manifest: one row per patient x modality, read and written in one place.

Columns: ``patient, site, modality, split, image, mask`` (:data:`MANIFEST_COLUMNS`, in the
order fedll writes them); ``split`` is optional when reading. Paths are relative to the
manifest's folder unless absolute. Modalities may be named as BraTS 2023 names them (t2w,
t2f); T1-weighted rows are skipped, anything else is an error naming the row.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from fedll.atomic import atomic_path
from fedll.data.nifti import CaseRecord, one_line
from fedll.errors import DataError

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = ("patient", "site", "modality", "split", "image", "mask")
OPTIONAL_COLUMNS: frozenset[str] = frozenset({"split"})
REQUIRED_COLUMNS: tuple[str, ...] = tuple(c for c in MANIFEST_COLUMNS if c not in OPTIONAL_COLUMNS)
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Names a manifest may use for T2 and FLAIR, and modalities it may list that fedll does not use.
MODALITY_ALIASES: Mapping[str, str] = {"t2": "t2", "t2w": "t2", "flair": "flair", "t2f": "flair"}
UNUSED_MODALITIES: frozenset[str] = frozenset({"t1", "t1w", "t1ce", "t1c", "t1gd", "t1n", "pd"})


def write_manifest(path: Path, rows: Iterable[Sequence[object]]) -> Path:
    """Write ``rows`` (values in :data:`MANIFEST_COLUMNS` order) to ``path`` atomically."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    return path


def read_manifest(path: Path) -> list[CaseRecord]:
    """A CSV with columns patient, site, modality, image, mask (and optionally split)."""
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip().lower() for c in reader.fieldnames or []]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable manifest ({one_line(exc)})") from exc
    if missing := [c for c in REQUIRED_COLUMNS if c not in columns]:
        raise DataError(
            f"{path}: manifest lacks column(s) {', '.join(missing)} "
            f"(needs {', '.join(REQUIRED_COLUMNS)}; optional split)"
        )
    records: list[CaseRecord] = []
    seen: set[tuple[str, str]] = set()
    for number, raw in enumerate(rows, start=1):
        row = {str(k).strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{path}: row {number} (line {number + 1})"
        record = _manifest_record(path.parent, row, where)
        if record is None:
            continue
        if (record.patient, record.modality) in seen:
            raise DataError(f"{where}: patient {record.patient!r} lists {record.modality} twice")
        seen.add((record.patient, record.modality))
        records.append(record)
    return records


def _manifest_record(folder: Path, row: Mapping[str, str], where: str) -> CaseRecord | None:
    if not row["patient"]:
        raise DataError(f"{where}: empty patient")
    name = row["modality"].lower()
    if name in UNUSED_MODALITIES:
        logger.debug("%s: skipping modality %s", where, name)
        return None
    if name not in MODALITY_ALIASES:
        known = ", ".join(sorted(MODALITY_ALIASES))
        raise DataError(f"{where}: unknown modality {row['modality']!r} (expected one of {known})")
    split = row.get("split", "").lower() or None
    if split is not None and split not in SPLITS:
        raise DataError(f"{where}: unknown split {row['split']!r} (expected {', '.join(SPLITS)})")
    paths = {}
    for column in ("image", "mask"):
        if not row[column]:
            raise DataError(f"{where}: empty {column} path")
        paths[column] = folder / Path(row[column]).expanduser()  # absolute paths stay absolute
        if not paths[column].is_file():
            raise DataError(f"{where}: {column} file not found: {paths[column]}")
    return CaseRecord(
        patient=row["patient"],
        modality=MODALITY_ALIASES[name],
        image=paths["image"],
        mask=paths["mask"],
        site=row["site"] or None,
        split=split,
    )
