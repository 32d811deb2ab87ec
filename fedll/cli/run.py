"""``fedll run``: every trial of a scenario, with a progress bar (a line per trial in a log),
then the report, the trackers and the key measures."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedll.cli.output import console, fail, guarded, progress_columns, quiet_flower, say
from fedll.cli.report import print_table, run_report
from fedll.config import Scenario, Trial, expand_trials, load_scenario

if TYPE_CHECKING:
    from fedll.run.backends import Progress as SweepProgress


@guarded
def run(
    scenario_path: Annotated[Path, typer.Argument(metavar="SCENARIO", help="scenario YAML")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="run directory (default runs/<name>)")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="override KEY=VALUE (YAML value)")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="print the trials and exit")] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: a local Ray)")
    ] = None,
    cpus_per_trial: Annotated[
        int | None, typer.Option(min=1, help="CPUs (and torch threads) per trial")
    ] = None,
    local: Annotated[
        bool, typer.Option(help="run trials one after another in this process, no Ray")
    ] = False,
) -> None:
    """Run every trial of a scenario, then write the forgetting tables and plots."""
    scenario = load_scenario(scenario_path, overrides or [])
    if scenario.tracking.tensorboard or scenario.tracking.mlflow:
        from fedll.tracking import check_installed

        check_installed(scenario.tracking, str(scenario_path))
    trials = expand_trials(scenario)
    if dry_run:
        _print_trials(scenario, trials)
        return
    # absolute: Ray workers may start in another directory
    run_dir = (out or Path("runs") / scenario.name).expanduser().resolve()
    if address:
        from fedll.run.ray_cluster import check_address

        check_address(address)
    from fedll.run.lock import hold_run_dir
    from fedll.run.provenance import write_provenance
    from fedll.run.run_dir import claim

    if scenario.tracking.mlflow:  # before the sweep: a store MLflow cannot reach is minutes
        from fedll.tracking import check_target

        check_target(run_dir, scenario.tracking, str(scenario_path))
    with hold_run_dir(run_dir, "fedll run"):  # one process at a time in a run directory
        claim(run_dir, scenario)
        write_provenance(run_dir)
        try:
            _run(run_dir, scenario, address, cpus_per_trial, local)
        except KeyboardInterrupt:
            say(
                f"interrupted; finished trials are kept in {run_dir}/trials, "
                "rerun the same command to resume",
                err=True,
            )
            raise typer.Exit(code=130) from None


def _run(
    run_dir: Path, scenario: Scenario, address: str | None, cpus: int | None, local: bool
) -> None:
    from fedll.config.grid import fingerprints
    from fedll.data.prepare import cohort_for
    from fedll.run.collect import collect
    from fedll.run.sweep import SweepOptions, run_sweep

    quiet_flower(verbose=logging.getLogger().level <= logging.INFO)
    if not address and not scenario.execution.address:
        from fedll.run.device import resolve_device

        resolve_device(scenario.execution.device)  # a cluster's devices are checked on it
    out = console()
    options = SweepOptions.from_scenario(
        scenario, address=address, cpus_per_trial=cpus, backend="local" if local else "ray"
    )
    source = str(run_dir / "scenario.yaml")

    def prepare() -> None:
        with out.status("preparing the cohort (synthesis and slice cache, once per cohort)"):
            cohort_for(run_dir, scenario, source=source)

    if options.backend == "local":
        prepare()
    # with Ray, the sweep prepares the cohort while Ray starts; the bar appears with the
    # first trial's progress (or at the end), so a failed preparation prints only its error
    shown = _TrialProgress(out, run_dir, len(expand_trials(scenario)))
    try:
        summary = run_sweep(
            run_dir,
            options,
            on_progress=shown.on_progress,
            on_trial_done=shown.on_done,
            on_resume=shown.on_resume,
            prepare=None if options.backend == "local" else prepare,
            on_kept=shown.on_kept,
        )
        shown.finish(len(summary.failed))
    finally:
        shown.stop()
    if summary.skipped:
        say(f"{len(summary.skipped)} finished trial(s) were kept from an earlier run")
    results, _ = collect(run_dir, fingerprints(scenario))
    if results.empty:
        fail(f"{run_dir}: no trial finished; see the errors above")
    built, unfinished = run_report(run_dir, partial=bool(summary.failed))
    print_table(built, failed=len(summary.failed), unfinished=unfinished)
    _track(run_dir, scenario, built.summary)
    say(f"results: {run_dir / 'results.csv'}")
    if summary.failed:
        fail(f"{len(summary.failed)} trial(s) failed: {', '.join(summary.failed)}")


class _TrialProgress:
    """The sweep's progress on ``out``: a bar of trials and one per running trial's rounds.
    A log (stdout not a terminal: a background run, a batch job) gets a line per trial where
    a terminal gets the bar, which such a log shows only at the end."""

    def __init__(self, out: Console, run_dir: Path, trials: int) -> None:
        from rich.progress import Progress

        self.out, self.run_dir, self.trials = out, run_dir, trials
        self.bar = Progress(*progress_columns(), console=out, transient=False)
        self.overall = self.bar.add_task("trials", total=trials)
        self.rounds: dict[str, int] = {}
        self.log = not out.is_terminal
        self.start = time.monotonic()

    def on_kept(self, kept: list[str]) -> None:
        self.bar.update(self.overall, completed=len(kept))
        if self.log and kept:
            self.out.print(
                Text(f"{len(kept)} finished trial(s) kept, {self.trials - len(kept)} to run")
            )

    def on_progress(self, event: SweepProgress) -> None:
        self.bar.start()
        tid = event.trial_id
        if tid not in self.rounds:
            self.rounds[tid] = self.bar.add_task(f"  {tid}", total=event.rounds)
        self.bar.update(self.rounds[tid], completed=event.round)

    def on_done(self, tid: str, error: str | None) -> None:
        self.bar.start()
        self.bar.advance(self.overall)
        if tid in self.rounds:
            self.bar.remove_task(self.rounds.pop(tid))
        if self.log and not error:
            done = int(self.bar.tasks[self.overall].completed)
            elapsed = timedelta(seconds=round(time.monotonic() - self.start))
            self.out.print(Text(f"trial {tid} finished ({done} of {self.trials}, {elapsed} in)"))
        if error:
            self.out.print(Text(f"trial {tid} failed: {error}", style="red"))
        elif events := _events(self.run_dir, tid):
            self.out.print(Text(f"trial {tid}: {events}", style="yellow"))

    def on_resume(self, tid: str, rnd: int) -> None:
        self.out.print(Text(f"resumed {tid} from round {rnd}"))

    def finish(self, failed: int) -> None:
        """Show the bar with every trial that did not fail counted."""
        self.bar.start()
        self.bar.update(self.overall, completed=self.trials - failed)

    def stop(self) -> None:
        if self.bar.live.is_started:
            self.bar.stop()


def _track(run_dir: Path, scenario: Scenario, summary: Any) -> None:
    """Log the finished trials not logged yet to the trackers the scenario names; a tracker
    that fails is one line naming its key (the results stay; a rerun logs what is missing)."""
    from fedll.config.grid import fingerprints
    from fedll.tracking import log_trials, mlflow_target

    tracking = scenario.tracking
    if logging.getLogger().level > logging.INFO:  # MLflow logs its store's setup at INFO
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    where = {
        "tensorboard": str(run_dir / "tensorboard"),
        "mlflow": mlflow_target(run_dir, tracking)[0] if tracking.mlflow else "",
    }
    only = {"tensorboard": {"mlflow": None}, "mlflow": {"tensorboard": False}}
    for tracker, others in only.items():
        if not getattr(tracking, tracker):
            continue
        try:
            logged = log_trials(
                run_dir, scenario.name, tracking.model_copy(update=others),
                fingerprints(scenario), summary,
            )  # fmt: skip
        except Exception as error:  # any tracker failure (a store down, a bad URI): one line
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            fail(f"tracking.{tracker}: {type(error).__name__}: {reason}")
        say(f"{tracker}: {len(logged[tracker])} trial(s) logged to {where[tracker]}")


def _events(run_dir: Path, trial_id: str) -> str:
    """The failed and rejected updates of a finished trial, in words ("" when none)."""
    from fedll.run.store import trial_events

    parts = []
    for kind, what in (("failed", "failed"), ("rejected", "sent a rejected update")):
        for site, rounds in trial_events(run_dir, trial_id)[kind].items():
            label = "round" if len(rounds) == 1 else "rounds"
            parts.append(f"{site} {what} in {label} {', '.join(map(str, rounds))}")
    return "; ".join(parts)


def _print_trials(scenario: Scenario, trials: list[Trial]) -> None:
    from fedll.federation.stream import counted_holdings, round_sites, uses_seed

    holdings = counted_holdings([(s.name, s.modality, s.patients) for s in scenario.sites])
    table = Table(title=f"{len(trials)} trials of {scenario.name}")
    columns = ("#", "model", "ordering", "batch", "per round", "strategy", "cl", "seed", "rounds")
    for col in columns:
        # a name too long for a narrow terminal folds onto a second line, whole: an ellipsis
        # could make two models (or strategies) that differ at their ends look the same
        table.add_column(col, overflow="fold")
    counted: dict[tuple[bool, str, int, int, int], int] = {}  # each stream's rounds, once
    for i, t in enumerate(trials):
        stream = (
            isinstance(t.ordering, str),  # a list's label could spell a named ordering
            t.ordering_label,
            t.arrival_batch,
            t.arrivals_per_round,
            t.seed if uses_seed(t.ordering) else 0,
        )
        if t.kind == "joint":
            rounds = 1  # the joint bound trains once on the pooled cases
        elif stream in counted:
            rounds = counted[stream]
        else:
            rounds = counted[stream] = len(
                round_sites(holdings, t.ordering, t.arrival_batch, t.seed, t.arrivals_per_round)
            )
        table.add_row(
            str(i),
            t.model,
            t.ordering_label,
            str(t.arrival_batch),
            str(t.arrivals_per_round),
            t.strategy_label,
            t.cl_label,
            str(t.seed),
            str(rounds),
        )
    console().print(table)
