"""Flower's log lines that say something false of a fedll trial, kept out of its log.

fedll's strategies leave Flower's federated evaluation off on purpose (``fraction_evaluate``
0: the sites hold no test cases; the ServerApp scores the global model on the coordinator's
held-out test sets after every round, through ``evaluate_fn``, and writes the scores to the
run directory rather than returning them to Flower). Flower then logs, under ``flwr run``
and in deployment, that "Federated evaluation will be skipped" and, each round, "Global
evaluation" followed by "MetricRecord: None", which reads as if nothing were evaluated. Those
lines, and only those, are filtered from Flower's logger while a ServerApp runs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from flwr.common.logger import FLOWER_LOGGER

F = TypeVar("F", bound=Callable[..., Any])

FALSE_LINES = frozenset(
    {
        "fraction_evaluate is set to 0.0. Federated evaluation will be skipped.",
        "Global evaluation",
        "\t└──> MetricRecord: None",
    }
)
"""Flower 1.42's messages (``FedAvg.__init__``, ``Strategy.start``) filtered out."""


class FalseLines(logging.Filter):
    """Drops the records whose message is one of :data:`FALSE_LINES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in FALSE_LINES


def without_false_lines(main: F) -> F:
    """Run ``main`` (a ServerApp's main) with :class:`FalseLines` on Flower's logger."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet = FalseLines()
        FLOWER_LOGGER.addFilter(quiet)
        try:
            return main(*args, **kwargs)
        finally:
            FLOWER_LOGGER.removeFilter(quiet)

    return wrapper  # type: ignore[return-value]
