"""The errors fedll raises for bad user input: one line that names the file or key."""

from __future__ import annotations


class FedllError(Exception):
    """Base of every error caused by user input; ``str(error)`` is the one-line message."""


class DataError(FedllError):
    """A data file, layout or manifest row that cannot be used."""


class ConfigError(FedllError):
    """A scenario key or value that is invalid."""
