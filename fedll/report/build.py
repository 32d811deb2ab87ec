"""``fedll report``: a run's tables and plots, rebuilt from its results files alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedll.errors import DataError
from fedll.report.attention import attention_distance
from fedll.report.completeness import (
    Expected,
    complete_configurations,
    describe,
    foreign_trials,
    missing_parts,
)
from fedll.report.html import page_context, write_html
from fedll.report.matrices import has_metric
from fedll.report.montage import write_montages
from fedll.report.page import read_scenario
from fedll.report.pairs import model_pairs
from fedll.report.plots import write_plots
from fedll.report.read import maybe_compressed, read_attention, read_results, read_routing
from fedll.report.routing import routing_separation
from fedll.report.summary import METRICS, summarise, trial_summary
from fedll.report.tables import caption, write_privacy, write_tables


@dataclass(frozen=True)
class Report:
    """What :func:`build_report` wrote: the forgetting table and the trial summary it rests on,
    every table's and plot's path, the page, the forgetting table's three files, the trials
    left out of a partial report (and the file listing them), and the model pairs' rows."""

    table: pd.DataFrame
    summary: pd.DataFrame
    tables: list[Path]
    plots: list[Path]
    html: Path
    csv: Path
    markdown: Path
    latex: Path
    left_out: list[str]
    missing: Path | None
    """``tables/missing.csv``, listing the trials left out; None when none was."""
    pairs: pd.DataFrame
    """The model pairs' comparison rows (:mod:`fedll.report.pairs`; empty where none)."""


def build_report(run_dir: Path, expected: Expected | None = None, partial: bool = False) -> Report:
    """Read ``run_dir/results.csv`` (and ``attention.csv`` and ``routing.csv`` if present; each
    may be gzipped, ``.csv.gz``, as a study folder stores them); write the tables to
    ``run_dir/tables`` (forgetting.*, trials.csv, attention_tv.csv, routing_separation.csv;
    where the results have HD95 and surface Dice, forgetting_hd95.* (over the detected cases),
    forgetting_detection_rate.*, forgetting_hd95_brats.* (BraTS's convention),
    forgetting_surface_dice.* and trials_<metric>.csv too; where a trial has an ε, privacy.*,
    each site's; where two models have three or more seeds, model_pairs.csv,
    :mod:`fedll.report.pairs`) and the plots to ``run_dir/plots`` (routing_<panel>.png from
    routing.csv, and a montage per configuration whose trial files hold previews,
    :mod:`fedll.report.montage`), and the page of it all, ``run_dir/report.html``.

    With ``expected`` (what the run's scenario asks for), files that hold a trial it does
    not name are refused, and results that lack a trial, a round or a test case are refused
    (DataError naming what is missing), unless ``partial``: then
    the configurations whose every trial is complete are reported and the trials left out are
    listed in ``tables/missing.csv``.

    Returns what was written (:class:`Report`).
    DataError (one line naming the file) for a missing or bad CSV.
    """
    run_dir = Path(run_dir)
    results_path = maybe_compressed(run_dir / "results.csv")
    results = read_results(results_path)
    attention_path = maybe_compressed(run_dir / "attention.csv")
    attention = read_attention(attention_path) if attention_path.exists() else None
    routing_path = maybe_compressed(run_dir / "routing.csv")
    routing = read_routing(routing_path) if routing_path.exists() else None
    tables_dir = run_dir / "tables"
    if expected is not None:
        for path, frame in ((results_path, results), (attention_path, attention),
                            (routing_path, routing)):  # fmt: skip
            if frame is not None and (foreign := foreign_trials(frame["trial"], expected)):
                more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
                raise DataError(
                    f"{path}: trial {foreign[0]!r}{more} is not one of the scenario's trials"
                )
    results, attention, routing, left_out, missing_path = _complete(
        results, attention, routing, expected, partial, results_path, tables_dir
    )
    summary = trial_summary(results)
    table = summarise(summary)
    tables, per_metric_tables = _write_tables(
        results, summary, table, attention, routing, tables_dir
    )
    pairs = model_pairs(results, list(read_scenario(run_dir).get("models") or {}))
    tables += _write_pairs(pairs, tables_dir)
    plots = write_plots(results, run_dir / "plots", attention, routing)
    plots += write_montages(results, run_dir, run_dir / "plots")
    html = write_html(
        run_dir,
        page_context(run_dir, table, summary, plots, left_out, results, per_metric_tables, pairs),
    )
    csv, markdown, latex = tables[:3]
    return Report(
        table, summary, tables, plots, html, csv, markdown, latex, left_out, missing_path, pairs
    )


def _complete(
    results: pd.DataFrame,
    attention: pd.DataFrame | None,
    routing: pd.DataFrame | None,
    expected: Expected | None,
    partial: bool,
    results_path: Path,
    tables_dir: Path,
) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None, list[str], Path | None]:
    """The results (and attention and routing rows) of the complete configurations, the
    trials left out and ``tables/missing.csv`` listing them (see :func:`build_report`)."""
    left_out: list[str] = []
    missing_path = None
    if expected is not None and (missing := missing_parts(results, expected)):
        if not partial:
            raise DataError(
                f"{results_path}: {describe(missing)} (`fedll report --partial` reports the "
                "complete configurations)"
            )
        results, left_out = complete_configurations(results, missing, expected)
        if results.empty:
            raise DataError(f"{results_path}: no configuration is complete; {describe(missing)}")
        kept = set(results["trial"])
        if attention is not None:
            attention = attention[attention["trial"].isin(kept)]
        if routing is not None:
            routing = routing[routing["trial"].isin(kept)]
        tables_dir.mkdir(parents=True, exist_ok=True)
        missing_path = tables_dir / "missing.csv"
        rows = [(t, missing.get(t, "its configuration is incomplete")) for t in left_out]
        pd.DataFrame(rows, columns=["trial", "missing"]).to_csv(missing_path, index=False)
    elif (stale := tables_dir / "missing.csv").exists():
        stale.unlink()  # from an earlier, partial report
    return results, attention, routing, left_out, missing_path


def _write_tables(
    results: pd.DataFrame,
    summary: pd.DataFrame,
    table: pd.DataFrame,
    attention: pd.DataFrame | None,
    routing: pd.DataFrame | None,
    tables_dir: Path,
) -> tuple[list[Path], dict[str, pd.DataFrame]]:
    """Write the forgetting tables (Dice's, then each other metric's), the trial summaries,
    the attention and routing tables and the privacy tables; returns their paths, in that
    order, and the forgetting table of each metric other than Dice."""
    tables = write_tables(table, tables_dir, title=caption("dice", results))
    extra = {"trials.csv": summary}
    per_metric_tables = {}
    for metric in METRICS:
        if metric == "dice" or not has_metric(results, metric):  # an earlier fedll
            continue
        per_metric = trial_summary(results, metric)
        per_metric_tables[metric] = summarise(per_metric, metric)
        tables += write_tables(
            per_metric_tables[metric], tables_dir, metric, caption(metric, results)
        )
        extra[f"trials_{metric}.csv"] = per_metric
    if attention is not None:
        extra["attention_tv.csv"] = attention_distance(attention)
    if routing is not None:
        extra["routing_separation.csv"] = routing_separation(routing)
    for name, frame in extra.items():
        frame.to_csv(tables_dir / name, index=False)
        tables.append(tables_dir / name)
    tables += write_privacy(results, tables_dir)
    return tables, per_metric_tables


def _write_pairs(pairs: pd.DataFrame, tables_dir: Path) -> list[Path]:
    """Write ``model_pairs.csv`` where there are pairs (an earlier one is removed where there
    are none); returns its path, if written."""
    if not pairs.empty:
        pairs.to_csv(tables_dir / "model_pairs.csv", index=False)
        return [tables_dir / "model_pairs.csv"]
    if (stale_pairs := tables_dir / "model_pairs.csv").exists():
        stale_pairs.unlink()
    return []
