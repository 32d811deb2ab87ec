"""``fedll report``: a run directory's tables, plots and page, checked against its scenario,
and the paired comparison with a baseline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedll.cli.output import guarded, say
from fedll.config import load_scenario

if TYPE_CHECKING:
    from fedll.report.build import Report


@guarded
def report(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="a run directory")],
    partial: Annotated[
        bool,
        typer.Option(help="report the complete configurations of an incomplete run"),
    ] = False,
    compare: Annotated[
        str | None,
        typer.Option(
            metavar="BASELINE",
            help="also compare every value of --compare-axis with BASELINE: each measure's "
            "paired difference with a 95% t interval over seeds and test cases (seed "
            "variance plus a case jackknife)",
        ),
    ] = None,
    compare_axis: Annotated[str, typer.Option(help="the grid axis --compare varies")] = "model",
    bootstrap: Annotated[
        int | None,
        typer.Option(hidden=True, help="no longer applies: --compare has no bootstrap"),
    ] = None,
) -> None:
    """Rebuild the forgetting tables and plots from RUN_DIR's results: where its trials are
    sealed, results.csv is first rebuilt from the trials that verify; then checked against
    RUN_DIR/scenario.yaml (every trial, round and test case must be there)."""
    from fedll.run.lock import hold_run_dir

    with hold_run_dir(run_dir, "fedll report", create=False):
        built, unfinished = run_report(run_dir, partial=partial)
        print_table(built, unfinished=unfinished)
        if bootstrap is not None:
            say("--bootstrap no longer applies: --compare's interval has no replicates", err=True)
        if compare is not None:
            _compare(run_dir, compare, compare_axis)


def _compare(run_dir: Path, baseline: str, axis: str) -> None:
    """Write and print the paired comparison with ``baseline`` (fedll.report.compare)."""
    from fedll.report.compare import compare, format_comparison
    from fedll.report.read import maybe_compressed, read_results
    from fedll.report.tables import to_markdown

    results = read_results(maybe_compressed(run_dir / "results.csv"))
    table = compare(results, baseline, axis=axis)
    stem = f"compare_{axis}-{baseline}"  # compare() checked: a value of the run's grid
    table.to_csv(run_dir / "tables" / f"{stem}.csv", index=False)
    wide = format_comparison(table)
    (run_dir / "tables" / f"{stem}.md").write_text(to_markdown(wide))
    where = run_dir / "tables" / stem
    say(f"compared with {axis} {baseline} (95% intervals, * excludes 0): {where}.csv, .md")
    for line in to_markdown(wide).splitlines():
        say(line)


def run_report(run_dir: Path, partial: bool = False) -> tuple[Report, int]:
    """The run's tables and plots, and how many of its scenario's trials have no results;
    results that lack part of their scenario are refused, unless ``partial`` (then the
    complete configurations are reported and the rest listed). A run directory with sealed
    trials is collected again first: the report is of what the seals vouch for
    (:func:`fedll.run.collect.recollect`)."""
    from fedll.config.grid import fingerprints
    from fedll.report.build import build_report
    from fedll.report.read import maybe_compressed, read_results
    from fedll.run.collect import expected_results, has_seals, recollect

    saved = run_dir / "scenario.yaml"
    if not saved.is_file():  # results without their scenario: nothing to check them against
        return build_report(run_dir), 0
    scenario = load_scenario(saved)
    if has_seals(run_dir):
        recollect(run_dir, fingerprints(scenario))
    results = read_results(maybe_compressed(run_dir / "results.csv"))
    expected = expected_results(run_dir, scenario, results)
    built = build_report(run_dir, expected=expected, partial=partial)
    unfinished = len(set(expected.rounds) - set(results["trial"]))
    if built.left_out:
        say(
            f"partial: {len(built.left_out)} trial(s) of {len(expected.rounds)} left out "
            f"(listed in {built.missing})",
            err=True,
        )
    return built, unfinished


def print_table(report: Report, failed: int = 0, unfinished: int = 0) -> None:
    """The key measures within 120 columns (every measure is in the tables' files and the
    page), one summary line, and where the page is. ``failed``: trials that failed in this
    run; the scenario's other ``unfinished`` trials (without results) were not run (``fedll
    report`` of a deployment that ran one trial of several, say)."""
    from fedll.report.pairs import pair_lines
    from fedll.report.terminal import summary_line, terminal_table, trial_counts

    for line in terminal_table(report.table):
        say(line)
    for line in pair_lines(report.pairs):
        say(line)
    done = report.summary["trial"].nunique()
    not_run = max(0, unfinished - failed)
    say(summary_line(done, failed, *trial_counts(report.summary), not_run=not_run))
    say(f"report: {report.html}")
