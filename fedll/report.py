"""The forgetting table (CSV / Markdown / LaTeX) and the plots of a run, from results.csv.

``results.csv`` is long: one row per trial x round x evaluated modality x test case, with the
columns of ``RESULT_COLUMNS``; ``arriving`` holds the modalities that trained in that round,
";"-joined ("" for round 0, the untrained model). A trial's rows give its Dice matrix ``R``
(``dice_matrix``), from which ``fedll.metrics`` computes the measures of DESIGN.md
"Definitions"; ``forgetting_table`` summarises them as mean ± std over the seeds of each
configuration (``CONFIG_COLUMNS`` plus any of ``EXTRA_CONFIG_COLUMNS`` present). Where the
results have the per-round ``failed`` and ``rejected`` columns (sites that failed, updates the
strategy rejected), the table also counts them per configuration (``COUNTS``, summed over
seeds).
Plots are drawn on ``matplotlib.figure.Figure`` (Agg, no pyplot state), imported lazily.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedll.atomic import atomic_path
from fedll.data import MODALITIES
from fedll.errors import DataError
from fedll.metrics import (
    area_under_curve,
    backward_transfer,
    final_dice,
    forgetting,
    learning_accuracy,
    switch_drops,
)

logger = logging.getLogger(__name__)

RESULT_COLUMNS: tuple[str, ...] = (
    "trial", "model", "ordering", "arrival_batch", "strategy", "seed",
    "round", "sites", "arriving", "modality", "case", "dice",
)  # fmt: skip
ATTENTION_COLUMNS: tuple[str, ...] = (
    "trial", "model", "ordering", "arrival_batch", "strategy", "seed",
    "round", "modality", "layer", "kernel", "mass",
)  # fmt: skip
CONFIG_COLUMNS: tuple[str, ...] = ("model", "ordering", "arrival_batch", "strategy")
EXTRA_CONFIG_COLUMNS: tuple[str, ...] = ("arrivals_per_round", "cl", "cl_method", "variant")
MEASURES: dict[str, str] = {  # column -> label in the formatted table
    "final_dice": "final Dice",
    "forgetting_final": "forgetting (final)",
    "forgetting_max": "forgetting (max)",
    "switch_drop_mean": "switch drop (mean)",
    "switch_drop_max": "switch drop (max)",
    "bwt": "BWT",
    "learning_accuracy": "learning acc.",
    "auc": "AUC",
    "mean_final_dice": "mean final Dice",
}
COUNTS: dict[str, str] = {  # per-round event column -> count column in the summaries
    "failed": "failed_updates",
    "rejected": "rejected_updates",
}
LABELS = {"t2": "T2", "flair": "FLAIR"}
_INTEGER_COLUMNS = ("arrival_batch", "seed", "round")

Matrix = tuple[np.ndarray, list[frozenset[int]]]


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The columns that identify a configuration (seeds of one configuration are averaged)."""
    return [*CONFIG_COLUMNS, *(c for c in EXTRA_CONFIG_COLUMNS if c in frame.columns)]


# ---------------------------------------------------------------- reading and checking


def read_results(path: Path) -> pd.DataFrame:
    """Read and check a results.csv; DataError (one line naming the file) when unusable."""
    return check_results(_read_csv(Path(path)), str(path))


def read_attention(path: Path) -> pd.DataFrame:
    """Read and check an attention.csv (``ATTENTION_COLUMNS``)."""
    frame = _read_csv(Path(path))
    _require_columns(frame, ATTENTION_COLUMNS, str(path))
    frame = frame.copy()
    frame["trial"] = frame["trial"].astype(str)
    for col in ("round", "seed", "arrival_batch"):
        frame[col] = _integers(frame[col], str(path), col)
    frame["mass"] = _floats(frame["mass"], str(path), "mass")
    return frame


def check_results(results: pd.DataFrame, source: str = "results") -> pd.DataFrame:
    """Validate long-format results and return a normalised copy (typed columns).

    Raises DataError naming ``source`` for missing columns, no rows, non-numeric or out-of-range
    values, unknown modalities, duplicated cases, or a trial/round whose configuration or
    ``arriving`` is not unique.
    """
    _require_columns(results, RESULT_COLUMNS, source)
    if results.empty:
        raise DataError(f"{source}: no result rows")
    out = results.copy()
    numeric = {*_INTEGER_COLUMNS, "dice"}
    for col in [*RESULT_COLUMNS, *EXTRA_CONFIG_COLUMNS, *COUNTS]:
        if col in out.columns and col not in numeric:
            out[col] = out[col].fillna("").astype(str)
    for col in _INTEGER_COLUMNS:
        out[col] = _integers(out[col], source, col)
    out["dice"] = _floats(out["dice"], source, "dice")
    if ((out["dice"] < 0) | (out["dice"] > 1)).any():
        raise DataError(f"{source}: column dice has values outside [0, 1]")
    unknown = sorted(set(out["modality"]) - set(MODALITIES))
    if unknown:
        raise DataError(
            f"{source}: unknown modality {unknown[0]!r} (expected {', '.join(MODALITIES)})"
        )
    canonical = {  # "flair;t2" and " t2 ; flair" are the same arrival as "t2;flair"
        value: ";".join(MODALITIES[m] for m in sorted(_parse_arriving(value, source)))
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
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        raise DataError(f"{source}: column {col} needs integers, got {series[bad].iloc[0]!r}")
    return values.astype(np.int64)


def _floats(series: pd.Series, source: str, col: str) -> pd.Series:
    values = pd.to_numeric(series, errors="coerce").astype(np.float64)
    text = series.astype(str).str.strip().str.lower()
    bad = values.isna() & series.notna() & ~text.isin(["", "nan", "none"])
    if bad.any():
        raise DataError(f"{source}: column {col} needs numbers, got {series[bad].iloc[0]!r}")
    return values


def _parse_arriving(value: str, source: str) -> frozenset[int]:
    names = [v.strip() for v in value.split(";") if v.strip()]
    unknown = [n for n in names if n not in MODALITIES]
    if unknown:
        raise DataError(f"{source}: column arriving has unknown modality {unknown[0]!r}")
    return frozenset(MODALITIES.index(n) for n in names)


# ---------------------------------------------------------------- Dice matrices and tables


def dice_matrix(trial_results: pd.DataFrame, source: str = "results") -> Matrix:
    """The Dice matrix of one trial's rows (checked, as from ``check_results``): ``R`` (T + 1, M)
    and ``arriving`` (T + 1 sets).

    ``R[t, m]`` is the mean Dice over modality ``MODALITIES[m]``'s test cases after round ``t``
    (NaN Dice values skipped; NaN when a round or modality has no rows); ``arriving[t]`` the
    indices of the modalities that trained in round ``t`` (empty for round 0 and missing rounds).
    """
    rounds = int(trial_results["round"].max())
    R = np.full((rounds + 1, len(MODALITIES)), np.nan)
    means = trial_results.groupby(["round", "modality"])["dice"].mean()
    for (t, modality), value in means.items():
        R[int(t), MODALITIES.index(modality)] = value
    arriving: list[frozenset[int]] = [frozenset() for _ in range(rounds + 1)]
    for t, value in trial_results.groupby("round")["arriving"].first().items():
        arriving[int(t)] = _parse_arriving(value, source)
    if arriving[0]:
        raise DataError(f"{source}: round 0 (the untrained model) must have an empty arriving")
    missing = sorted(set(range(rounds + 1)) - set(trial_results["round"]))
    if missing:
        logger.warning(
            "trial %s has no rows for rounds %s", trial_results["trial"].iloc[0], missing
        )
    return R, arriving


def trial_matrices(results: pd.DataFrame) -> dict[str, Matrix]:
    """``dice_matrix`` of every trial, keyed by trial id (in the order of the rows)."""
    return checked_matrices(check_results(results))


def checked_matrices(results: pd.DataFrame) -> dict[str, Matrix]:
    """``trial_matrices`` of results already through :func:`check_results`."""
    return {str(t): dice_matrix(frame) for t, frame in results.groupby("trial", sort=False)}


def trial_summary(results: pd.DataFrame) -> pd.DataFrame:
    """One row per trial x evaluated modality with every measure of ``MEASURES``.

    Per modality ``m``: ``final_dice`` R[T, m]; ``forgetting_final`` / ``forgetting_max`` the
    last and the largest entry of ``forgetting(R)[:, m]``; ``switch_drop_mean`` / ``_max`` over
    the drops of ``m`` at switches (NaN without any); ``bwt`` and ``learning_accuracy`` as in
    ``fedll.metrics`` for modality ``m``; ``auc`` the mean Dice over rounds 1..T. The trial's
    ``mean_final_dice`` (mean over modalities) and, where the results have them, its counts of
    failed sites and rejected updates over all rounds (``COUNTS``) are repeated on each of its
    rows.
    """
    results = check_results(results)
    keys = config_columns(results)
    evaluated = [m for m in MODALITIES if m in set(results["modality"])]
    counted = {c: n for c, n in COUNTS.items() if c in results.columns}
    rows = []
    for trial, frame in results.groupby("trial", sort=False):
        R, arriving = dice_matrix(frame)
        F, final, auc = forgetting(R), final_dice(R), area_under_curve(R)
        mean_final = nan_reduce(np.nanmean, final[[MODALITIES.index(e) for e in evaluated]])
        counts = {n: round_events(frame, c) for c, n in counted.items()}
        first = frame.iloc[0]
        for modality in evaluated:
            m = MODALITIES.index(modality)
            drops = switch_drops(R, arriving, modality=m)
            rows.append(
                {
                    "trial": trial,
                    **{k: first[k] for k in keys},
                    "seed": first["seed"],
                    "modality": modality,
                    "rounds": R.shape[0] - 1,
                    "final_dice": final[m],
                    "forgetting_final": F[-1, m],
                    "forgetting_max": nan_reduce(np.nanmax, F[:, m]),
                    "switch_drop_mean": nan_reduce(np.nanmean, drops),
                    "switch_drop_max": nan_reduce(np.nanmax, drops),
                    "bwt": backward_transfer(R, arriving, modality=m),
                    "learning_accuracy": learning_accuracy(R, arriving, modality=m),
                    "auc": auc[m],
                    "mean_final_dice": mean_final,
                    **counts,
                }
            )
    return _sorted(pd.DataFrame(rows), [*keys, "seed"])


def round_events(trial_results: pd.DataFrame, column: str) -> int:
    """How many sites one trial's ``column`` (``failed`` or ``rejected``) names over its rounds
    (each round's rows repeat the same ";"-joined names)."""
    per_round = trial_results.groupby("round")[column].first()
    return sum(len([s for s in str(v).split(";") if s.strip()]) for v in per_round)


def forgetting_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per configuration x modality: ``n_seeds`` and ``<measure>_mean`` / ``<measure>_std``,
    and the ``COUNTS`` columns summed over seeds where the results have them.

    Means skip NaN (a seed without switches adds no switch drop); std is the sample standard
    deviation over seeds (ddof=1, NaN for a single seed).
    """
    return summarise(trial_summary(results))


def summarise(summary: pd.DataFrame) -> pd.DataFrame:
    """Aggregate a ``trial_summary`` over the seeds of each configuration x modality."""
    keys = [*config_columns(summary), "modality"]
    groups = summary.groupby(keys, sort=False, dropna=False)
    measures = list(MEASURES)
    parts = [
        groups["trial"].nunique().rename("n_seeds"),
        groups[measures].mean().add_suffix("_mean"),
        groups[measures].std(ddof=1).add_suffix("_std"),
        groups[measures].count().add_suffix("_n"),
    ]
    counts = [n for n in COUNTS.values() if n in summary.columns]
    if counts:
        parts.append(groups[counts].sum())
    table = pd.concat(parts, axis=1).reset_index()
    repeated = groups["seed"].nunique() < table.set_index(keys)["n_seeds"]
    if repeated.any():
        logger.warning("configurations with repeated seeds: %s", list(repeated[repeated].index))
    stats = [f"{m}_{s}" for m in measures for s in ("mean", "std", "n")]
    return _sorted(table[[*keys, "n_seeds", *stats, *counts]], keys[:-1])


def format_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The readable view: one "mean ± std" string per measure; "n/a" where no seed has a value,
    and "(n=k)" where only k of the configuration's seeds have one; then the ``COUNTS`` (summed
    over seeds) where the table has them."""

    def cell(mean: float, std: float, n: int, seeds: int) -> str:
        if np.isnan(mean):
            return "n/a"
        text = f"{mean:.{digits}f}" + ("" if np.isnan(std) else f" ± {std:.{digits}f}")
        return text + (f" (n={n})" if n < seeds else "")

    keys = [*config_columns(table), "modality"]
    view = table[keys].copy()
    view["modality"] = view["modality"].map(lambda m: LABELS.get(m, m))
    view["seeds"] = table["n_seeds"]
    for measure, label in MEASURES.items():
        columns = [table[f"{measure}_{s}"] for s in ("mean", "std", "n")] + [table["n_seeds"]]
        view[label] = [cell(*values) for values in zip(*columns, strict=True)]
    for name in COUNTS.values():
        if name in table.columns:
            view[name.replace("_", " ")] = table[name].astype(int)
    return view.astype(str)


def to_markdown(view: pd.DataFrame) -> str:
    """A GitHub-style pipe table of a string DataFrame."""

    def row(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [row(view.columns), "|" + "|".join("---" for _ in view.columns) + "|"]
    lines += [row(r) for r in view.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(view: pd.DataFrame) -> str:
    """A booktabs ``tabular`` of a string DataFrame (needs ``\\usepackage{booktabs}``)."""

    def escape(text: Any) -> str:
        text = re.sub(r"([&%$#_{}])", r"\\\1", str(text).replace("\\", "\0"))
        text = text.replace("\0", r"\textbackslash{}").replace("~", r"\textasciitilde{}")
        return text.replace("^", r"\textasciicircum{}").replace("±", r"$\pm$")

    def row(cells: Sequence[Any]) -> str:
        return " & ".join(escape(c) for c in cells) + r" \\"

    return "\n".join(
        [
            r"\begin{tabular}{" + "l" * len(view.columns) + "}",
            r"\toprule",
            row(view.columns),
            r"\midrule",
            *(row(r) for r in view.itertuples(index=False)),
            r"\bottomrule",
            r"\end{tabular}",
            "",
        ]
    )


def write_tables(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write forgetting.csv (numeric), forgetting.md and forgetting.tex (mean ± std)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    view = format_table(table)
    texts = {
        "forgetting.csv": table.to_csv(index=False),
        "forgetting.md": to_markdown(view),
        "forgetting.tex": to_latex(view),
    }
    paths = []
    for name, text in texts.items():
        path = out_dir / name
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        paths.append(path)
    logger.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths


def last_round(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of each trial's last round (a frame with ``trial`` and ``round`` columns)."""
    return frame[frame["round"] == frame.groupby("trial")["round"].transform("max")]


def attention_distance(attention: pd.DataFrame) -> pd.DataFrame:
    """Total-variation distance between T2 and FLAIR attention, per trial x round x layer.

    Each modality's ``mass`` over a layer's kernels is normalised to sum 1, then
    ``tv = 0.5 * sum_k |p_t2(k) - p_flair(k)|`` (0 = same routing, 1 = disjoint kernels).
    """
    keys = ["trial", "round", "layer"]
    mass = attention.groupby([*keys, "kernel", "modality"], sort=False)["mass"].mean()
    wide = mass.unstack("modality").reindex(columns=list(MODALITIES))
    wide = wide / wide.groupby(level=keys, sort=False).transform("sum")
    tv = (wide["t2"] - wide["flair"]).abs().groupby(level=keys, sort=False).sum(min_count=1) / 2
    return tv.rename("tv").reset_index()


# ---------------------------------------------------------------- plots


def nan_reduce(func: Any, values: np.ndarray, axis: int | None = None) -> Any:
    """``np.nanmean`` and friends without the all-NaN RuntimeWarning (the result is NaN)."""
    values = np.asarray(values, dtype=np.float64)
    if axis is None and values.size == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = func(values, axis=axis)
    return float(result) if axis is None else result


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    order = frame["modality"].map({m: i for i, m in enumerate(MODALITIES)})
    frame = frame.assign(_modality=order).sort_values([*keys, "_modality"], kind="stable")
    return frame.drop(columns="_modality").reset_index(drop=True)


# ---------------------------------------------------------------- the `fedll report` command


def _maybe_compressed(path: Path) -> Path:
    """``path``, or ``path.gz`` where only that exists (pandas reads either)."""
    gz = path.with_name(path.name + ".gz")
    return gz if not path.exists() and gz.exists() else path


def build_report(run_dir: Path) -> dict[str, Any]:
    """Read ``run_dir/results.csv`` (and ``attention.csv`` if present; either may be gzipped,
    ``.csv.gz``, as a study folder stores them); write the tables to
    ``run_dir/tables`` (forgetting.*, trials.csv, attention_tv.csv) and the plots to
    ``run_dir/plots``.

    Returns ``{"table": forgetting table, "summary": trial summary, "tables": [paths],
    "plots": [paths], "csv" / "markdown" / "latex": the forgetting table's files}``.
    DataError (one line naming the file) for a missing or bad CSV.
    """
    run_dir = Path(run_dir)
    results = read_results(_maybe_compressed(run_dir / "results.csv"))
    attention_path = _maybe_compressed(run_dir / "attention.csv")
    attention = read_attention(attention_path) if attention_path.exists() else None
    summary = trial_summary(results)
    table = summarise(summary)
    tables_dir = run_dir / "tables"
    tables = write_tables(table, tables_dir)
    extra = {"trials.csv": summary}
    if attention is not None:
        extra["attention_tv.csv"] = attention_distance(attention)
    for name, frame in extra.items():
        frame.to_csv(tables_dir / name, index=False)
        tables.append(tables_dir / name)
    from fedll.plots import write_plots  # matplotlib only when plotting

    plots = write_plots(results, run_dir / "plots", attention)
    files = dict(zip(("csv", "markdown", "latex"), tables[:3], strict=True))
    return {"table": table, "summary": summary, "tables": tables, "plots": plots, **files}
