"""The error of a model builder's argument (:class:`ArgumentError`), raised by the registry's
checks and by the routing spec's cross-argument check; the scenario schema turns it into a
config error naming ``models.<key>.<argument>``."""

from __future__ import annotations


class ArgumentError(ValueError):
    """A builder argument that cannot be used; ``argument`` names it (None: the combination)."""

    def __init__(self, argument: str | None, message: str) -> None:
        super().__init__(message if argument is None else f"{argument}: {message}")
        self.argument = argument
        self.message = message
