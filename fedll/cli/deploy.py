"""``fedll certs`` and ``fedll site``: a deployment's test certificates and keys, and one
site's SuperNode."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fedll.cli.output import guarded, say


@guarded
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
    say(f"CA: {files.ca_cert}  SuperLink: {files.server_cert}, {files.server_key}")
    for site, (private, public) in files.keys.items():
        say(f"{site}: {private} (stays at the site), {public} (register it)")


@guarded
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
    say(
        f"site {found.name}: {len(found.records)} {found.modality} training cases in "
        f"{data_dir.expanduser().resolve()}",
        err=True,
    )
    if dry_run:
        say(shlex.join(command))
        return
    sys.stderr.flush()
    sys.stdout.flush()
    os.execvp(command[0], command)
