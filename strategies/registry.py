"""Strategies by the names used in scenario files: the lifelong layer
(:class:`strategies.lifelong.Lifelong`) over the rule each option class of
:data:`fedll.config.strategies.StrategyOptions` names: fedll's own rules (``fedavg``,
``fedbn``, ``dynamic-aware``, ``scaffold``, ``ditto``) or one of Flower's
(:data:`fedll.config.flower.FLOWER_RULES`), built from its options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp import strategy as flower
from flwr.serverapp.strategy import Strategy

from fedll.config.flower import flower_kwargs, flower_rule
from fedll.config.strategies import (
    DittoOptions,
    DynamicAwareOptions,
    FedAvgOptions,
    FedBNOptions,
    ScaffoldOptions,
    StrategyOptions,
)
from fedll.federation.messages import CONFIG, MODEL, WEIGHT
from fedll.models.inspection import ModelLayout
from strategies.ditto import Ditto
from strategies.dynamic_aware import DynamicAware
from strategies.fedavg import PreciseFedAvg
from strategies.lifelong import Lifelong, Plan
from strategies.privacy import private_rule
from strategies.scaffold import Scaffold

RULE_DEFAULTS: Mapping[str, Any] = {
    "fraction_train": 1.0,  # every node the layer shows the rule: the round's arrivals
    "fraction_evaluate": 0.0,  # the ServerApp evaluates the global model itself
    "min_train_nodes": 0,
    "min_evaluate_nodes": 0,
    "min_available_nodes": 0,
    "weighted_by_key": WEIGHT,
    "arrayrecord_key": MODEL,
    "configrecord_key": CONFIG,
}
"""What the lifelong layer sets in every rule it wraps (who trains, the record keys)."""


def build_rule(
    options: StrategyOptions,
    layout: ModelLayout,
    training_lr: float,
    population: int = 1,
    seed: int = 0,
) -> Strategy:
    """The aggregation rule ``options`` names, with its options, in Flower's DP wrapper where
    ``options.dp`` asks for one (:func:`strategies.privacy.private_rule`; ``seed``: the
    trial's, for the noise); ``training_lr`` is the sites' learning rate (q-FedAvg's
    ``client_learning_rate`` by default), ``population`` the sites of the federation (the
    accountant's population, SCAFFOLD's ``N``)."""
    rule = _plain_rule(options, layout, training_lr, population)
    if options.dp is None:
        return rule
    counters = [k for k, group in layout.groups.items() if group == "counter"]
    return private_rule(options.dp, rule, counters, population, seed)


def _plain_rule(
    options: StrategyOptions, layout: ModelLayout, training_lr: float, num_sites: int
) -> Strategy:
    if isinstance(options, FedAvgOptions | FedBNOptions):
        if options.dp is not None:  # Flower's accountant needs FedAvg's own aggregate_train
            return flower.FedAvg(**RULE_DEFAULTS)
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
    seed: int = 0,
) -> Lifelong:
    """The lifelong strategy ``options`` names: the layer over its rule. ``plan``,
    ``layout`` and ``site_of`` are the layer's (see :class:`Lifelong`); ``seed`` seeds a DP
    rule's noise; its population is the sites of ``site_of``."""
    rule = flower_rule(options)
    return Lifelong(
        build_rule(options, layout, training_lr, population=max(1, len(site_of)), seed=seed),
        plan=plan,
        layout=layout,
        site_of=site_of,
        norm=options.norm,
        # a server step leaves buffers to the plain average, unless DP must noise them too
        buffers="average" if rule and rule.server_step and options.dp is None else "rule",
    )
