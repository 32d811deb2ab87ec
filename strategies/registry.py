"""Strategies by the names used in scenario files (``fedll.options.STRATEGY_NAMES``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from flwr.serverapp.strategy import FedAvg

from fedll.options import StrategyOptions
from strategies.dynamic_aware import DynamicAwareFedAvg
from strategies.fedavg import LifelongFedAvg
from strategies.fedavgm import LifelongFedAvgM
from strategies.fedprox import LifelongFedProx

STRATEGIES: dict[str, Callable[..., FedAvg]] = {
    "fedavg": LifelongFedAvg,
    "fedbn": partial(LifelongFedAvg, norm="local"),
    "fedprox": LifelongFedProx,
    "dynamic-aware": DynamicAwareFedAvg,
    "fedavgm": LifelongFedAvgM,
}


def strategy_names() -> list[str]:
    return sorted(STRATEGIES)


def build_strategy(options: StrategyOptions, **kwargs: Any) -> FedAvg:
    """The strategy ``options`` names, with its options; ``kwargs`` are the plan, the model
    layout and the site map."""
    try:
        factory = STRATEGIES[options.name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {options.name!r}; known: {', '.join(strategy_names())}"
        ) from None
    return factory(**kwargs, **options.options())
