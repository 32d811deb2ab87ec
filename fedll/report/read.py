"""Reading and checking results: ``results.csv``, ``attention.csv`` and ``routing.csv`` into
typed frames.

:func:`check_results` validates long-format results (columns of
:data:`fedll.results.columns.RESULT_COLUMNS`; files of an earlier fedll may lack the added ones) and
returns a normalised copy; every problem is a :class:`~fedll.errors.DataError` naming the
source. Each file may be gzipped (``.csv.gz``), as a study folder stores them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedll.data import MODALITIES
from fedll.errors import DataError
from fedll.results.columns import (
    METRIC_COLUMNS,
    PERSONAL_COLUMNS,
    PRIVACY_COLUMNS,
    REQUIRED_ATTENTION_COLUMNS,
    REQUIRED_RESULT_COLUMNS,
    REQUIRED_ROUTING_COLUMNS,
    RESULT_COLUMNS,
    config_columns,
)

COUNTS: dict[str, str] = {  # per-round event column -> count column in the summaries
    "failed": "failed_updates",
    "rejected": "rejected_updates",
}
_INTEGER_COLUMNS = ("arrival_batch", "seed", "round")


def read_results(path: Path) -> pd.DataFrame:
    """Read and check a results.csv; DataError (one line naming the file) when unusable."""
    return check_results(_read_csv(Path(path)), str(path))


def read_attention(path: Path) -> pd.DataFrame:
    """Read and check an attention.csv (:data:`fedll.results.columns.ATTENTION_COLUMNS`): integer
    ``round``, ``seed`` and ``arrival_batch``, a finite ``mass`` on every row."""
    frame = _read_csv(Path(path))
    _require_columns(frame, REQUIRED_ATTENTION_COLUMNS, str(path))
    frame = frame.copy()
    frame["trial"] = frame["trial"].astype(str)
    for col in ("round", "seed", "arrival_batch"):
        frame[col] = _integers(frame[col], str(path), col)
    frame["mass"] = _floats(frame["mass"], str(path), "mass")
    _no_empty(frame["mass"].isna(), str(path), "mass", "every kernel has a mass")
    return frame


def read_routing(path: Path) -> pd.DataFrame:
    """Read and check a routing.csv (:data:`fedll.results.columns.ROUTING_COLUMNS`): ``round``,
    ``seed``, ``arrival_batch`` and ``slices`` integers, ``decoding_accuracy`` and ``chance``
    in [0, 1] or NaN (a layer with too few slices of a modality is not decoded)."""
    source = str(path)
    frame = _read_csv(Path(path))
    _require_columns(frame, REQUIRED_ROUTING_COLUMNS, source)
    frame = frame.copy()
    frame["trial"] = frame["trial"].astype(str)
    for col in ("round", "seed", "arrival_batch", "slices"):
        frame[col] = _integers(frame[col], source, col)
    for col in ("decoding_accuracy", "chance"):
        frame[col] = _floats(frame[col], source, col)
        if ((frame[col] < 0) | (frame[col] > 1)).any():
            raise DataError(f"{source}: column {col} has values outside [0, 1]")
    return frame


def check_results(results: pd.DataFrame, source: str = "results") -> pd.DataFrame:
    """Validate long-format results and return a normalised copy (typed columns).

    Raises DataError naming ``source`` for missing columns, no rows, non-numeric, infinite,
    out-of-range or missing values (naming the column and the row, data rows counted from 1:
    :func:`_require_values` says which columns may be empty), unknown modalities, duplicated
    cases, or a trial/round whose configuration or ``arriving`` is not unique.
    """
    _require_columns(results, REQUIRED_RESULT_COLUMNS, source)
    if results.empty:
        raise DataError(f"{source}: no result rows")
    out = results.copy()
    floats = (*METRIC_COLUMNS, "surface_tolerance_mm", *PRIVACY_COLUMNS, *PERSONAL_COLUMNS)
    for col in floats:  # results of an earlier fedll have Dice only: the others are NaN
        if col not in out.columns:
            out[col] = np.nan
    if "evaluated_slices" not in out.columns:
        out["evaluated_slices"] = ""
    numeric = {*_INTEGER_COLUMNS, *floats}
    for col in RESULT_COLUMNS:
        if col in out.columns and col not in numeric:
            out[col] = out[col].fillna("").astype(str)
    for col in _INTEGER_COLUMNS:
        out[col] = _integers(out[col], source, col)
    for col in floats:
        out[col] = _floats(out[col], source, col)
    _require_values(out, source)
    for col in ("dice", "surface_dice", "personal_dice", "personal_surface_dice", "dp_delta"):
        if ((out[col] < 0) | (out[col] > 1)).any():
            raise DataError(f"{source}: column {col} has values outside [0, 1]")
    for col in ("hd95", "surface_tolerance_mm", "personal_hd95", "epsilon"):
        if (out[col] < 0).any():
            raise DataError(f"{source}: column {col} has negative values")
    unknown = sorted(set(out["modality"]) - set(MODALITIES))
    if unknown:
        raise DataError(
            f"{source}: unknown modality {unknown[0]!r} (expected {', '.join(MODALITIES)})"
        )
    canonical = {  # "flair;t2" and " t2 ; flair" are the same arrival as "t2;flair"
        value: ";".join(MODALITIES[m] for m in sorted(parse_arriving(value, source)))
        for value in out["arriving"].unique()
    }
    out["arriving"] = out["arriving"].map(canonical)
    if (out["round"] < 0).any():
        raise DataError(f"{source}: column round has negative values")
    if (out.loc[out["round"] == 0, "arriving"] != "").any():
        raise DataError(f"{source}: round 0 (the untrained model) must have an empty arriving")
    dup = out.duplicated(["trial", "round", "modality", "case"])
    if dup.any():
        row = out[dup].iloc[0]
        raise DataError(
            f"{source}: trial {row['trial']} round {row['round']} has case {row['case']!r} "
            f"({row['modality']}) twice"
        )
    for keys, cols in (
        (["trial"], [*config_columns(out), "seed"]),
        (["trial", "round"], ["arriving"]),
    ):
        counts = out.groupby(keys)[cols].nunique()
        bad = counts[(counts > 1).any(axis=1)]
        if not bad.empty:
            col = bad.columns[(bad.iloc[0] > 1).to_numpy()][0]
            where = " ".join(
                f"{k} {v}" for k, v in zip(keys, np.atleast_1d(bad.index[0]), strict=True)
            )
            raise DataError(f"{source}: {where} has several values of {col}")
    return out


def _require_values(results: pd.DataFrame, source: str) -> None:
    """Refuse an empty (or NaN) value where the schema has none: every case has a Dice, and
    a trial has its HD95, surface Dice and tolerance on every row or on none (a trial of an
    earlier fedll, scored by Dice alone). The other columns may be empty: the privacy columns
    of a trial without an accountant, the personalised metrics before a site of the modality
    has trained (or without Ditto). The HD95 of a case with one empty mask is a number
    (373.13 mm, :data:`fedll.evaluation.metrics.segmentation.HD95_MAX_MM`), never empty."""
    _no_empty(results["dice"].isna(), source, "dice", "every test case has a Dice")
    for col in ("hd95", "surface_dice", "surface_tolerance_mm"):
        empty = results[col].isna()
        by_trial = empty.groupby(results["trial"])
        partly = by_trial.transform("any") & ~by_trial.transform("all")
        _no_empty(empty & partly, source, col, "a trial has it on every row or on none")


def _no_empty(empty: pd.Series, source: str, col: str, why: str) -> None:
    if (rows := np.flatnonzero(empty.to_numpy())).size:
        raise DataError(f"{source}: column {col} is empty in row {rows[0] + 1} ({why})")


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path}: not a readable CSV ({reason})") from None


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing columns {', '.join(missing)}")


def _integers(series: pd.Series, source: str, col: str) -> pd.Series:
    """The column as int64; DataError naming the column and row (data rows counted from 1)
    of the first value that is not an integer within 2**53 (inf, NaN and 1e300 are not)."""
    values = pd.to_numeric(series, errors="coerce").astype(np.float64)
    bad = ~np.isfinite(values) | (values != values.round()) | (values.abs() > 2**53)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{source}: column {col} needs integers, got {series.iloc[row]!r} (row {row + 1})"
        )
    return values.astype(np.int64)


def _floats(series: pd.Series, source: str, col: str) -> pd.Series:
    """The column as float64, empty values (and "nan", "none") NaN; DataError naming the
    column and row (data rows counted from 1) of the first value that is not a number or is
    infinite (no column of fedll's files holds one)."""
    values = pd.to_numeric(series, errors="coerce").astype(np.float64)
    text = series.astype(str).str.strip().str.lower()
    bad = values.isna() & series.notna() & ~text.isin(["", "nan", "none"])
    if bad.any():
        raise DataError(f"{source}: column {col} needs numbers, got {series[bad].iloc[0]!r}")
    if (infinite := np.flatnonzero(np.isinf(values.to_numpy()))).size:
        row = int(infinite[0])
        raise DataError(
            f"{source}: column {col} needs finite numbers, got {series.iloc[row]!r} (row {row + 1})"
        )
    return values


def parse_arriving(value: str, source: str) -> frozenset[int]:
    names = [v.strip() for v in value.split(";") if v.strip()]
    unknown = [n for n in names if n not in MODALITIES]
    if unknown:
        raise DataError(f"{source}: column arriving has unknown modality {unknown[0]!r}")
    return frozenset(MODALITIES.index(n) for n in names)


def maybe_compressed(path: Path) -> Path:
    """``path``, or ``path.gz`` where only that exists (pandas reads either)."""
    gz = path.with_name(path.name + ".gz")
    return gz if not path.exists() and gz.exists() else path
