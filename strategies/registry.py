"""Strategies by the names used in scenario files (the option classes of
:data:`fedll.config.options.StrategyOptions`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from flwr.serverapp.strategy import FedAvg

from fedll.config.options import (
    DynamicAwareOptions,
    FedAvgMOptions,
    FedAvgOptions,
    FedBNOptions,
    FedProxOptions,
    StrategyOptions,
)
from strategies.dynamic_aware import DynamicAwareFedAvg
from strategies.fedavg import LifelongFedAvg
from strategies.fedavgm import LifelongFedAvgM
from strategies.fedprox import LifelongFedProx

STRATEGIES: Mapping[type, Callable[..., FedAvg]] = {
    FedAvgOptions: LifelongFedAvg,
    FedBNOptions: partial(LifelongFedAvg, norm="local"),
    FedProxOptions: LifelongFedProx,
    DynamicAwareOptions: DynamicAwareFedAvg,
    FedAvgMOptions: LifelongFedAvgM,
}
"""Each strategy option class of the scenario schema -> the strategy it configures."""


def build_strategy(options: StrategyOptions, **kwargs: Any) -> FedAvg:
    """The strategy ``options`` names, with its options; ``kwargs`` are the plan, the model
    layout and the site map."""
    return STRATEGIES[type(options)](**kwargs, **options.options())
