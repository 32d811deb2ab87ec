"""Flower's lines that say something false of a fedll trial are filtered while a ServerApp
runs, and only those, and only then."""

from __future__ import annotations

import logging

import pytest
from flwr.common.logger import FLOWER_LOGGER, log
from flwr.serverapp.strategy import FedAvg

from strategies.flower_log import without_false_lines


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def collected():
    handler = Collect()
    level = FLOWER_LOGGER.level
    FLOWER_LOGGER.addHandler(handler)
    FLOWER_LOGGER.setLevel(logging.DEBUG)
    try:
        yield handler.messages
    finally:
        FLOWER_LOGGER.removeHandler(handler)
        FLOWER_LOGGER.setLevel(level)


def _round() -> None:
    FedAvg(fraction_evaluate=0.0)  # Flower warns that federated evaluation is skipped
    log(logging.INFO, "Global evaluation")
    log(logging.INFO, "\t└──> MetricRecord: %s", None)
    log(logging.INFO, "[ROUND 1/2]")
    log(logging.INFO, "\t└──> MetricRecord: %s", {"dice": 0.5})


def test_the_false_lines_are_dropped_while_a_main_runs_and_only_then(collected) -> None:
    without_false_lines(_round)()
    assert collected == ["[ROUND 1/2]", "\t└──> MetricRecord: {'dice': 0.5}"]
    collected.clear()
    _round()  # outside a ServerApp's main: Flower's log as it is
    assert "Global evaluation" in collected and len(collected) == 5
    assert any("Federated evaluation will be skipped" in m for m in collected)
