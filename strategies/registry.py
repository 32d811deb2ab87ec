"""Strategies by the names used in scenario files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import FedAvg

from strategies.fedavg import LifelongFedAvg

STRATEGIES: dict[str, Callable[..., FedAvg]] = {
    "fedavg": LifelongFedAvg,
}


def strategy_names() -> list[str]:
    return sorted(STRATEGIES)


def build_strategy(name: str, **kwargs: Any) -> FedAvg:
    """A strategy by name; ``kwargs`` are the plan, parameter groups and site map."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; known: {', '.join(strategy_names())}"
        ) from None
    return factory(**kwargs)
