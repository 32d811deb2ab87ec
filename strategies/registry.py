"""Strategies by the names used in scenario files: the lifelong layer
(:class:`strategies.lifelong.Lifelong`) over the rule each option class of
:data:`fedll.config.options.StrategyOptions` names: fedll's own rules (``fedavg``,
``fedbn``, ``dynamic-aware``, ``scaffold``, ``ditto``) or one of Flower's
(:data:`fedll.config.options.FLOWER_RULES`), built from its options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp import strategy as flower
from flwr.serverapp.strategy import Strategy

from fedll.config.options import (
    DittoOptions,
    DynamicAwareOptions,
    FedAvgOptions,
    FedBNOptions,
    ScaffoldOptions,
    StrategyOptions,
    flower_kwargs,
    flower_rule,
)
from fedll.models.inspection import ModelLayout
from strategies.ditto import Ditto
from strategies.dynamic_aware import DynamicAware
from strategies.fedavg import PreciseFedAvg
from strategies.lifelong import ARRAYS, CONFIG, WEIGHT, Lifelong, Plan
from strategies.scaffold import Scaffold

RULE_DEFAULTS: Mapping[str, Any] = {
    "fraction_train": 1.0,  # every node the layer shows the rule: the round's arrivals
    "fraction_evaluate": 0.0,  # the ServerApp evaluates the global model itself
    "min_train_nodes": 0,
    "min_evaluate_nodes": 0,
    "min_available_nodes": 0,
    "weighted_by_key": WEIGHT,
    "arrayrecord_key": ARRAYS,
    "configrecord_key": CONFIG,
}
"""What the lifelong layer sets in every rule it wraps (who trains, the record keys)."""


def build_rule(
    options: StrategyOptions, layout: ModelLayout, training_lr: float, num_sites: int = 1
) -> Strategy:
    """The aggregation rule ``options`` names, with its options; ``training_lr`` is the
    sites' learning rate (q-FedAvg's ``client_learning_rate`` by default), ``num_sites`` the
    sites of the federation (SCAFFOLD's ``N``)."""
    if isinstance(options, FedAvgOptions | FedBNOptions):
        return PreciseFedAvg(groups=layout.groups, **RULE_DEFAULTS)
    if isinstance(options, DynamicAwareOptions):
        return DynamicAware(layout=layout, **RULE_DEFAULTS)
    if isinstance(options, ScaffoldOptions):
        return Scaffold(
            layout.groups, layout.trainable, num_sites, options.server_lr, **RULE_DEFAULTS
        )
    if isinstance(options, DittoOptions):
        return Ditto(layout.groups, options.lam, **RULE_DEFAULTS)
    rule = flower_rule(options)
    assert rule is not None, f"no rule for strategy {options.name!r}"
    kwargs = flower_kwargs(options)
    if kwargs.get("client_learning_rate", 0.0) is None:
        kwargs["client_learning_rate"] = training_lr
    return getattr(flower, rule.cls)(**RULE_DEFAULTS, **kwargs)


def build_strategy(
    options: StrategyOptions,
    plan: Plan,
    layout: ModelLayout,
    site_of: Mapping[int, str],
    training_lr: float = 1e-3,
) -> Lifelong:
    """The lifelong strategy ``options`` names: the layer over its rule. ``plan``,
    ``layout`` and ``site_of`` are the layer's (see :class:`Lifelong`); ``site_of`` also
    counts the sites of the federation."""
    return Lifelong(
        build_rule(options, layout, training_lr, num_sites=len(site_of)),
        plan=plan,
        layout=layout,
        site_of=site_of,
        norm=options.norm,
    )
