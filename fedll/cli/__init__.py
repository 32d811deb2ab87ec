"""The ``fedll`` command line: thin commands over the library.

Every error caused by the user's input is one line on stderr, exit code 2, no traceback
(:func:`fedll.cli.output.guarded`). The commands, in the order ``fedll --help`` lists them:

- :mod:`~fedll.cli.data`: ``cohort`` (a synthetic cohort), ``segment`` (masks from a kept
  model), ``site-data`` (each site's share of a scenario's cases);
- :mod:`~fedll.cli.run`: ``run`` (every trial of a scenario, then the report);
- :mod:`~fedll.cli.report`: ``report`` (the tables, plots and page of a run directory);
- :mod:`~fedll.cli.deploy`: ``certs`` and ``site`` (a deployment's keys, a site's SuperNode);
- :mod:`~fedll.cli.output`: what they share (literal output, the one-line error).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from fedll.cli import data, deploy, report, run
from fedll.cli.output import say
from fedll.errors import FedllError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Federated lifelong learning for glioma segmentation: static vs Dy-CNN U-Nets.",
)
app.command()(data.cohort)
app.command()(run.run)
app.command()(report.report)
app.command()(deploy.certs)
app.command()(data.segment)
app.command("site-data")(data.site_data)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    deploy.site
)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress details")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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
        say(f"error: {error}", err=True)
        sys.exit(2)
