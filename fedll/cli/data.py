"""``fedll cohort``, ``fedll segment`` and ``fedll site-data``: a synthetic cohort, masks from a
kept model, and each site's share of a scenario's cases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedll.cli.output import console, guarded, progress_columns, say
from fedll.config import load_scenario
from fedll.errors import ConfigError, DataError


@guarded
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
    say(f"wrote {patients} patients at {len(names)} sites: {manifest}")
    if preview:
        say(f"preview: {write_preview(manifest, out / 'preview.png')}")


@guarded
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
        say(f"wrote {written}")
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
    columns = progress_columns()
    stderr = Console(stderr=True, highlight=False)
    with Progress(*columns, console=stderr, transient=True) as bar:
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
    say(f"wrote {len(records)} masks to {out}")


@guarded
def site_data(
    scenario_path: Annotated[Path, typer.Argument(metavar="SCENARIO", help="scenario YAML")],
    out: Annotated[Path, typer.Option(help="folder for one data folder per site")],
) -> None:
    """Write OUT/<site>/manifest.csv: the cases the scenario's split gives each site (a local
    stand-in for each hospital's own data folder)."""
    from fedll.data.prepare import prepare_cohort
    from fedll.deploy.site_data import write_site_manifests

    scenario = load_scenario(scenario_path)
    with console().status("preparing the cohort"):
        prepared = prepare_cohort(scenario, source=str(scenario_path))
    written = write_site_manifests(prepared, out)
    for site, path in written.items():
        say(f"{site}: {len(prepared.sites[site])} cases in {path}")
