"""``fedll report``: a run's tables and plots, rebuilt from its results files alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedll.report.attention import attention_distance
from fedll.report.plots import write_plots
from fedll.report.read import maybe_compressed, read_attention, read_results
from fedll.report.summary import summarise, trial_summary
from fedll.report.tables import write_tables


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
    results = read_results(maybe_compressed(run_dir / "results.csv"))
    attention_path = maybe_compressed(run_dir / "attention.csv")
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
    plots = write_plots(results, run_dir / "plots", attention)
    files = dict(zip(("csv", "markdown", "latex"), tables[:3], strict=True))
    return {"table": table, "summary": summary, "tables": tables, "plots": plots, **files}
