"""The ``fedll`` command line: thin commands over the library.

Every error caused by the user's input (a bad scenario key, a bad NIfTI file, a path that
cannot be read or written) is printed as one line on stderr and exits with code 2, without a
traceback: each command runs under one handler (:func:`_guarded`) that turns fedll's errors,
and the OS's about a path, into that line. Messages are printed literally, never as markup.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedll.config import Scenario, Trial, dump_scenario, expand_trials, load_scenario
from fedll.errors import ConfigError, DataError, FedllError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Federated lifelong learning for glioma segmentation: static vs Dy-CNN U-Nets.",
)


def _console() -> Console:
    return Console(stderr=False, highlight=False)


def _say(message: str, *, err: bool = False) -> None:
    """Print ``message`` literally (a key or path holding ``[...]`` is not markup)."""
    Console(stderr=err, highlight=False).print(message, soft_wrap=True, markup=False)


def _fail(message: str) -> None:
    line = Text.assemble(("error:", "bold red"), " ", message)
    Console(stderr=True, highlight=False).print(line, soft_wrap=True)
    raise typer.Exit(code=2)


def _os_message(error: OSError) -> str:
    """``path: reason`` for an OS error about a path (the reason alone otherwise)."""
    reason = error.strerror or type(error).__name__
    where = error.filename if error.filename is not None else None
    return f"{where}: {reason}" if where is not None else reason


def _guarded(command: F) -> F:
    """Run a command under the one handler that makes a user's mistake one line, exit 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FedllError as error:
            _fail(str(error))
        except OSError as error:
            _fail(_os_message(error))

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress details")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _quiet_flower(verbose: bool) -> None:
    """Flower logs every round at INFO through its own handler; keep that for --verbose."""
    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.propagate = False
    if not verbose:
        FLOWER_LOGGER.setLevel(logging.WARNING)


@app.command()
@_guarded
def cohort(
    out: Annotated[Path, typer.Option(help="folder to write the cohort into")],
    patients: Annotated[int, typer.Option(help="number of patients")] = 130,
    sites: Annotated[
        str, typer.Option(help="site names, comma-separated, or a number of sites")
    ] = "4",
    seed: Annotated[int, typer.Option(help="random seed (same seed, same bytes)")] = 0,
    test_patients: Annotated[int | None, typer.Option(help="patients in the test split")] = None,
    workers: Annotated[int, typer.Option(help="processes to use")] = 1,
    preview: Annotated[
        bool, typer.Option(help="also write preview.png (a montage of a few cases)")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="replace the cohort already in OUT (its files only)")
    ] = False,
) -> None:
    """Write a synthetic multi-site glioma cohort (BraTS 2021 layout + manifest.csv)."""
    from fedll.data import MAX_SITES
    from fedll.data.cohort import generate_cohort
    from fedll.data.preview import write_preview

    count = sites.strip()
    if count.isascii() and count.isdigit():  # a number of sites, bounded before it is counted
        if len(count) > len(str(MAX_SITES)) or int(count) > MAX_SITES:
            shown = count if len(count) <= 20 else f"a number of {len(count)} digits"
            raise ConfigError(f"sites: at most {MAX_SITES} sites, got {shown}")
        names = [f"site{i + 1}" for i in range(int(count))]
    else:
        names = [s.strip() for s in sites.split(",") if s.strip()]
    kwargs = {} if test_patients is None else {"test_patients": test_patients}
    manifest = generate_cohort(
        out,
        patients=patients,
        sites=names,
        seed=seed,
        workers=workers,
        overwrite=overwrite,
        **kwargs,
    )
    _say(f"wrote {patients} patients at {len(names)} sites: {manifest}")
    if preview:
        _say(f"preview: {write_preview(manifest, out / 'preview.png')}")


@app.command()
@_guarded
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
        from fedll.run.sweep import check_address

        check_address(address)
    from fedll.run.lock import hold_run_dir
    from fedll.run.provenance import write_provenance

    if scenario.tracking.mlflow:  # before the sweep: a store MLflow cannot reach is minutes
        from fedll.tracking import check_target

        check_target(run_dir, scenario.tracking, str(scenario_path))
    with hold_run_dir(run_dir, "fedll run"):  # one process at a time in a run directory
        _claim(run_dir, scenario)
        write_provenance(run_dir)
        try:
            _run(run_dir, scenario, address, cpus_per_trial, local)
        except KeyboardInterrupt:
            _say(
                f"interrupted; finished trials are kept in {run_dir}/trials, "
                "rerun the same command to resume",
                err=True,
            )
            raise typer.Exit(code=130) from None


def _progress_columns() -> tuple:
    """The columns of fedll's progress bars: what, bar, done of total, time elapsed."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )


def _claim(run_dir: Path, scenario: Scenario) -> None:
    """Make ``run_dir`` this scenario's: new, resumed (the same scenario), grown (a scenario
    whose grid holds every trial finished there, each with the same fingerprint: more seeds or
    models, say; those trials are kept), or taken over from another scenario that finished no
    trial there (a failed preparation locks nothing)."""
    from fedll.atomic import atomic_path
    from fedll.config.grid import fingerprints
    from fedll.run.store import verify_trial

    saved = run_dir / "scenario.yaml"
    resolved = dump_scenario(scenario)
    if saved.exists() and not _same_scenario(saved, resolved, scenario):
        try:
            held = fingerprints(load_scenario(saved))
        except FedllError:
            held = {}
        done = [t for t, f in held.items() if verify_trial(run_dir, t, f) is None]
        wanted = fingerprints(scenario)
        if done and all(wanted.get(t) == held[t] for t in done):
            # every finished trial is one of this scenario's, run with the same settings (its
            # fingerprint covers the cohort and the split too, so cohort.json stays)
            logging.getLogger(__name__).info(
                "%s: the run grows to %d trials, keeping its %d finished one(s)",
                saved, len(wanted), len(done),
            )  # fmt: skip
            with atomic_path(saved) as tmp:
                tmp.write_text(resolved)
            return
        if done:
            raise DataError(
                f"{saved}: this run directory holds a different scenario with {len(done)} "
                "finished trial(s) that this one does not repeat (a run may only grow: more "
                "grid values, the other settings equal); choose another --out (or delete it) "
                "to start afresh"
            )
        logging.getLogger(__name__).warning(
            "%s held another scenario that finished no trial; it is replaced", saved
        )
        (run_dir / "cohort.json").unlink(missing_ok=True)  # its split may differ
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(saved) as tmp:
        tmp.write_text(resolved)


def _same_scenario(saved: Path, resolved: str, scenario: Scenario) -> bool:
    """Whether the run directory's scenario is ``scenario``: the same text, or one that an
    earlier fedll wrote differently and that parses to the same scenario (a scalar that is
    now a one-value list) or that differs only in ``tracking``, so a rerun resumes (and logs
    the finished trials to the trackers now asked for) instead of refusing."""
    if saved.read_text() == resolved:
        return True
    try:  # tracking does not change results: a finished run may add or change it
        held = load_scenario(saved)
    except FedllError:
        return False
    return held.model_copy(update={"tracking": scenario.tracking}) == scenario


def _run(
    run_dir: Path, scenario: Scenario, address: str | None, cpus: int | None, local: bool
) -> None:
    from rich.progress import Progress

    from fedll.config.grid import fingerprints
    from fedll.data.prepare import cohort_for
    from fedll.run.store import collect
    from fedll.run.sweep import Progress as SweepProgress
    from fedll.run.sweep import SweepOptions, run_sweep

    _quiet_flower(verbose=logging.getLogger().level <= logging.INFO)
    if not address and not scenario.execution.address:
        from fedll.run.device import resolve_device

        resolve_device(scenario.execution.device)  # a cluster's devices are checked on it
    console = _console()
    options = SweepOptions.from_scenario(
        scenario, address=address, cpus_per_trial=cpus, backend="local" if local else "ray"
    )
    source = str(run_dir / "scenario.yaml")

    def prepare() -> None:
        with console.status("preparing the cohort (synthesis and slice cache, once per cohort)"):
            cohort_for(run_dir, scenario, source=source)

    if options.backend == "local":
        prepare()
    # with Ray, the sweep prepares the cohort while Ray starts; the bar appears with the
    # first trial's progress (or at the end), so a failed preparation prints only its error
    bar = Progress(*_progress_columns(), console=console, transient=False)
    trials = expand_trials(scenario)
    overall = bar.add_task("trials", total=len(trials))
    rounds: dict[str, int] = {}
    # a log (stdout not a terminal: a background run, a batch job) gets a line per trial
    # where a terminal gets the bar, which such a log shows only at the end
    log = not console.is_terminal
    start = time.monotonic()

    def on_kept(kept: list[str]) -> None:
        bar.update(overall, completed=len(kept))
        if log and kept:
            console.print(
                Text(f"{len(kept)} finished trial(s) kept, {len(trials) - len(kept)} to run")
            )

    def on_progress(event: SweepProgress) -> None:
        bar.start()
        tid = event.trial_id
        if tid not in rounds:
            rounds[tid] = bar.add_task(f"  {tid}", total=event.rounds)
        bar.update(rounds[tid], completed=event.round)

    def on_done(tid: str, error: str | None) -> None:
        bar.start()
        bar.advance(overall)
        if tid in rounds:
            bar.remove_task(rounds.pop(tid))
        if log and not error:
            done = int(bar.tasks[overall].completed)
            elapsed = timedelta(seconds=round(time.monotonic() - start))
            console.print(Text(f"trial {tid} finished ({done} of {len(trials)}, {elapsed} in)"))
        if error:
            console.print(Text(f"trial {tid} failed: {error}", style="red"))
        elif events := _events(run_dir, tid):
            console.print(Text(f"trial {tid}: {events}", style="yellow"))

    def on_resume(tid: str, rnd: int) -> None:
        console.print(Text(f"resumed {tid} from round {rnd}"))

    try:
        summary = run_sweep(
            run_dir,
            options,
            on_progress=on_progress,
            on_trial_done=on_done,
            on_resume=on_resume,
            prepare=None if options.backend == "local" else prepare,
            on_kept=on_kept,
        )
        bar.start()
        bar.update(overall, completed=len(trials) - len(summary.failed))
    finally:
        if bar.live.is_started:
            bar.stop()
    if summary.skipped:
        _say(f"{len(summary.skipped)} finished trial(s) were kept from an earlier run")
    results, _ = collect(run_dir, fingerprints(scenario))
    if results.empty:
        _fail(f"{run_dir}: no trial finished; see the errors above")
    built = _report(run_dir, partial=bool(summary.failed))
    _print_table(built, failed=len(summary.failed))
    _track(run_dir, scenario, built["summary"])
    _say(f"results: {run_dir / 'results.csv'}")
    if summary.failed:
        _fail(f"{len(summary.failed)} trial(s) failed: {', '.join(summary.failed)}")


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
            _fail(f"tracking.{tracker}: {type(error).__name__}: {reason}")
        _say(f"{tracker}: {len(logged[tracker])} trial(s) logged to {where[tracker]}")


def _events(run_dir: Path, trial_id: str) -> str:
    """The failed and rejected updates of a finished trial, in words ("" when none)."""
    from fedll.run.store import trial_events

    parts = []
    for kind, what in (("failed", "failed"), ("rejected", "sent a rejected update")):
        for site, rounds in trial_events(run_dir, trial_id)[kind].items():
            label = "round" if len(rounds) == 1 else "rounds"
            parts.append(f"{site} {what} in {label} {', '.join(map(str, rounds))}")
    return "; ".join(parts)


def _report(run_dir: Path, partial: bool = False) -> dict:
    """The run's tables and plots; results that lack part of their scenario are refused,
    unless ``partial`` (then the complete configurations are reported and the rest listed).
    A run directory with sealed trials is collected again first: the report is of what the
    seals vouch for (:func:`fedll.run.store.recollect`)."""
    from fedll.config.grid import fingerprints
    from fedll.report.build import build_report
    from fedll.report.read import maybe_compressed, read_results
    from fedll.run.store import expected_results, has_seals, recollect

    saved = run_dir / "scenario.yaml"
    if not saved.is_file():  # results without their scenario: nothing to check them against
        return {**build_report(run_dir), "unfinished": 0}
    scenario = load_scenario(saved)
    if has_seals(run_dir):
        recollect(run_dir, fingerprints(scenario))
    results = read_results(maybe_compressed(run_dir / "results.csv"))
    expected = expected_results(run_dir, scenario, results)
    built = build_report(run_dir, expected=expected, partial=partial)
    built["unfinished"] = len(set(expected.rounds) - set(results["trial"]))
    if built["left_out"]:
        _say(
            f"partial: {len(built['left_out'])} trial(s) of {len(expected.rounds)} left out "
            f"(listed in {built['missing']})",
            err=True,
        )
    return built


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
    _console().print(table)


def _print_table(report: dict, failed: int = 0) -> None:
    """The key measures within 120 columns (every measure is in the tables' files and the
    page), one summary line, and where the page is. ``failed``: trials that failed in this
    run; the scenario's other trials without results were not run (``fedll report`` of a
    deployment that ran one trial of several, say)."""
    from fedll.report.pairs import pair_lines
    from fedll.report.terminal import summary_line, terminal_table, trial_counts

    for line in terminal_table(report["table"]):
        _say(line)
    for line in pair_lines(report.get("pairs")):
        _say(line)
    done = report["summary"]["trial"].nunique()
    not_run = max(0, report.get("unfinished", 0) - failed)
    _say(summary_line(done, failed, *trial_counts(report["summary"]), not_run=not_run))
    _say(f"report: {report['html']}")


@app.command()
@_guarded
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
        built = _report(run_dir, partial=partial)
        _print_table(built)
        if bootstrap is not None:
            _say("--bootstrap no longer applies: --compare's interval has no replicates", err=True)
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
    _say(f"compared with {axis} {baseline} (95% intervals, * excludes 0): {where}.csv, .md")
    for line in to_markdown(wide).splitlines():
        _say(line)


@app.command()
@_guarded
def certs(
    out: Annotated[Path, typer.Option(help="folder to write the certificates and keys into")],
    sites: Annotated[
        str, typer.Option(help="site names, comma-separated: one node-auth key pair each")
    ] = "",
    hosts: Annotated[
        list[str] | None,
        typer.Option("--host", help="SuperLink name or IP in its certificate (repeatable)"),
    ] = None,
    days: Annotated[int, typer.Option(help="days the certificates stay valid")] = 365,
    overwrite: Annotated[bool, typer.Option(help="replace an existing set")] = False,
) -> None:
    """Write a test CA, a SuperLink TLS certificate and per-site node-auth keys (local trials)."""
    from fedll.deploy.certs import DEFAULT_HOSTS, write_certificates

    names = [s.strip() for s in sites.split(",") if s.strip()]
    files = write_certificates(out, names, hosts or DEFAULT_HOSTS, days, overwrite)
    _say(f"CA: {files.ca_cert}  SuperLink: {files.server_cert}, {files.server_key}")
    for site, (private, public) in files.keys.items():
        _say(f"{site}: {private} (stays at the site), {public} (register it)")


@app.command()
@_guarded
def segment(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="a kept model (.safetensors)")],
    source: Annotated[
        Path,
        typer.Argument(metavar="INPUT", help="a NIfTI image, a cohort folder or a manifest CSV"),
    ],
    out: Annotated[
        Path,
        typer.Option(help="the mask (.nii.gz) of an image; a folder for a cohort's masks"),
    ],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="slices per forward pass")] = 32,
    channel: Annotated[
        int | None, typer.Option(min=0, help="the channel of a 4-D image INPUT")
    ] = None,
    layout: Annotated[str, typer.Option(help="layout of a cohort INPUT (default: auto)")] = "auto",
    modality: Annotated[
        str | None,
        typer.Option(help="t2 or flair: an image INPUT's modality, for a model that routes by it"),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="replace masks already at OUT (an input file never)")
    ] = False,
) -> None:
    """Write whole-tumour masks (uint8 0/1, the image's grid) of INPUT with a kept model:
    one image, or every case of a cohort (OUT/<patient>_<modality>_pred.nii.gz). A model
    that routes by modality needs --modality for an image (a cohort's cases name theirs).
    A file already at OUT is replaced only with --overwrite; an input file never."""
    from rich.progress import Progress

    from fedll.data.layouts import detect_layout, discover
    from fedll.models.saved import read_model
    from fedll.run.device import resolve_device
    from fedll.run.store import sealed_model
    from fedll.segment import check_out_dir, is_image, segment_cohort, segment_file

    where = resolve_device(device, key="--device")
    saved = read_model(model, sealed=sealed_model(model))
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    if is_image(source):
        written = segment_file(saved, source, out, where, batch_size, channel, modality, overwrite)
        _say(f"wrote {written}")
        return
    for option, value in (("--channel", channel), ("--modality", modality)):
        if value is not None:  # it would be ignored
            raise ConfigError(
                f"{option}: for an image INPUT; each case of cohort {source} has its own"
            )
    check_out_dir(out)
    # a manifest lists its files; any other layout is found by scanning the folder, which
    # segment_cohort keeps OUT out of
    found = detect_layout(source) if layout == "auto" else layout
    scanned = None if found == "manifest" else source
    records = discover(source, found)
    columns = _progress_columns()
    console = Console(stderr=True, highlight=False)
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("segmenting", total=len(records))
        segment_cohort(
            saved,
            records,
            out,
            where,
            batch_size,
            on_case=lambda *_: bar.advance(task),
            overwrite=overwrite,
            scanned=scanned,
        )
    _say(f"wrote {len(records)} masks to {out}")


@app.command("site-data")
@_guarded
def site_data(
    scenario_path: Annotated[Path, typer.Argument(metavar="SCENARIO", help="scenario YAML")],
    out: Annotated[Path, typer.Option(help="folder for one data folder per site")],
) -> None:
    """Write OUT/<site>/manifest.csv: the cases the scenario's split gives each site (a local
    stand-in for each hospital's own data folder)."""
    from fedll.data.prepare import prepare_cohort
    from fedll.deploy.site_data import write_site_manifests

    scenario = load_scenario(scenario_path)
    with _console().status("preparing the cohort"):
        prepared = prepare_cohort(scenario, source=str(scenario_path))
    written = write_site_manifests(prepared, out)
    for site, path in written.items():
        _say(f"{site}: {len(prepared.sites[site])} cases in {path}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_guarded
def site(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--site", help="the site's name in the scenario")],
    modality: Annotated[str, typer.Option(help="the one modality it holds: t2 or flair")],
    data_dir: Annotated[Path, typer.Option(help="its cases, in any supported layout")],
    superlink: Annotated[str, typer.Option(help="SuperLink address HOST:PORT")],
    root_certificates: Annotated[
        Path | None, typer.Option(help="the SuperLink's CA certificate (TLS)")
    ] = None,
    insecure: Annotated[bool, typer.Option(help="no TLS (loopback tests only)")] = False,
    auth_key: Annotated[
        Path | None, typer.Option(help="node-auth private key (OpenSSH EC), if the link asks")
    ] = None,
    runtime_port: Annotated[
        int | None,
        typer.Option(help="port of this SuperNode's local Runtime API (default 9094)"),
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="slice cache of this site")] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="where the site keeps its state between rounds, to survive restarts "
            "(default: DATA_DIR/.fedll-state)"
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="where it trains: auto (default), cpu, cuda, cuda:N")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="check and print the flower-supernode command only")
    ] = False,
) -> None:
    """Check this site's data, then run flower-supernode for it (extra arguments after --
    go to flower-supernode)."""
    import os
    import shlex

    from fedll.deploy.supernode import site_command

    found, command = site_command(
        name,
        modality,
        data_dir,
        superlink,
        root_certificates=root_certificates,
        insecure=insecure,
        auth_key=auth_key,
        runtime_port=runtime_port,
        cache_dir=cache_dir,
        state_dir=state_dir,
        device=device,
        extra=ctx.args,
    )
    _say(
        f"site {found.name}: {len(found.records)} {found.modality} training cases in "
        f"{data_dir.expanduser().resolve()}",
        err=True,
    )
    if dry_run:
        _say(shlex.join(command))
        return
    sys.stderr.flush()
    sys.stdout.flush()
    os.execvp(command[0], command)


PIPED_COLUMNS = 200
"""The width of fedll's output where stdout is not a terminal (a file, a pipe, CI's log):
rich would otherwise wrap and cut it at 80 columns."""
HELP_COLUMNS = 100
"""The width of ``--help`` where stdout is not a terminal (typer's panels fill their width)."""


def piped_width(environ: dict[str, str], stdout_is_terminal: bool) -> dict[str, str]:
    """``environ`` with ``COLUMNS`` set to :data:`PIPED_COLUMNS` where stdout is not a
    terminal and no width was asked for (rich, and typer's help, read it)."""
    if stdout_is_terminal or environ.get("COLUMNS"):
        return environ
    return {**environ, "COLUMNS": str(PIPED_COLUMNS)}


def main() -> None:
    """Console-script entry point."""
    os.environ.update(piped_width(dict(os.environ), sys.stdout.isatty()))
    if not sys.stdout.isatty():  # typer's help: a page's width, not a table's
        import typer.rich_utils

        typer.rich_utils.MAX_WIDTH = typer.rich_utils.MAX_WIDTH or HELP_COLUMNS
    try:
        app()
    except FedllError as error:  # a library error that escaped a command
        _say(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
