"""What every ``fedll`` command shares: literal output, the one-line error, its handler.

Every error caused by the user's input (a bad scenario key, a bad NIfTI file, a path that
cannot be read or written) is printed as one line on stderr and exits with code 2, without a
traceback: each command runs under one handler (:func:`guarded`) that turns fedll's errors,
and the OS's about a path, into that line. Messages are printed literally, never as markup.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from fedll.errors import FedllError

F = TypeVar("F", bound=Callable[..., Any])


def console() -> Console:
    """The console of a command's output (stdout, no highlighting)."""
    return Console(stderr=False, highlight=False)


def say(message: str, *, err: bool = False) -> None:
    """Print ``message`` literally (a key or path holding ``[...]`` is not markup)."""
    Console(stderr=err, highlight=False).print(message, soft_wrap=True, markup=False)


def fail(message: str) -> None:
    """Print ``error: message`` on stderr and exit with code 2."""
    line = Text.assemble(("error:", "bold red"), " ", message)
    Console(stderr=True, highlight=False).print(line, soft_wrap=True)
    raise typer.Exit(code=2)


def os_message(error: OSError) -> str:
    """``path: reason`` for an OS error about a path (the reason alone otherwise)."""
    reason = error.strerror or type(error).__name__
    where = error.filename if error.filename is not None else None
    return f"{where}: {reason}" if where is not None else reason


def guarded(command: F) -> F:
    """Run a command under the one handler that makes a user's mistake one line, exit 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FedllError as error:
            fail(str(error))
        except OSError as error:
            fail(os_message(error))

    return wrapper  # type: ignore[return-value]


def quiet_flower(verbose: bool) -> None:
    """Flower logs every round at INFO through its own handler; keep that for --verbose."""
    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.propagate = False
    if not verbose:
        FLOWER_LOGGER.setLevel(logging.WARNING)


def progress_columns() -> tuple:
    """The columns of fedll's progress bars: what, bar, done of total, time elapsed."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
