"""Strategies by the names used in scenario files: one entry per strategy in
:data:`STRATEGIES` binds its option class (:mod:`fedll.config.strategies`,
:mod:`fedll.config.flower`) to the factory of its server rule and, where it has a site side,
to the factory of its site part (both in ``strategies/<name>.py``: ``scaffold``, ``ditto``).
:func:`build_strategy` puts the lifelong layer (:class:`strategies.lifelong.Lifelong`) over the
rule; the ClientApp asks :func:`site_parts` what a train message needs at the site."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import RecordDict
from flwr.serverapp import strategy as flower
from flwr.serverapp.strategy import Strategy

from fedll.config.flower import FLOWER_OPTIONS, flower_kwargs, flower_rule
from fedll.config.instruction import TrainInstruction
from fedll.config.options import LayerOptions, name_of
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
from fedll.training.train import SitePart
from strategies.ditto import Ditto, ditto_site
from strategies.dynamic_aware import DynamicAware
from strategies.fedavg import PreciseFedAvg
from strategies.lifelong import Lifelong, Plan
from strategies.privacy import private_rule
from strategies.scaffold import Scaffold, scaffold_site

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


@dataclass(frozen=True)
class RuleInputs:
    """What a rule is built with besides its options: the model's ``layout``, the sites'
    ``training_lr`` and ``num_sites``, the sites of the federation."""

    layout: ModelLayout
    training_lr: float
    num_sites: int


RuleFactory = Callable[[Any, RuleInputs], Strategy]
"""(options, inputs) -> the server's aggregation rule."""
SiteFactory = Callable[[RecordDict, RecordDict, TrainInstruction], SitePart | None]
"""(train message content, the site's kept state, its instruction) -> the strategy's site
part, or None where the message does not ask for one."""


@dataclass(frozen=True)
class StrategyHome:
    """One strategy: its ``options`` class (its scenario name is the class's ``name``), its
    server ``rule`` factory, and its ``site`` part factory (None: nothing but training the
    global model at the site)."""

    options: type[LayerOptions]
    rule: RuleFactory
    site: SiteFactory | None = None

    @property
    def name(self) -> str:
        """The strategy's scenario name."""
        return name_of(self.options)


def _fedavg(options: FedAvgOptions | FedBNOptions, inputs: RuleInputs) -> Strategy:
    if options.dp is not None:  # Flower's accountant needs FedAvg's own aggregate_train
        return flower.FedAvg(**RULE_DEFAULTS)
    return PreciseFedAvg(groups=inputs.layout.groups, **RULE_DEFAULTS)


def _flower(options: LayerOptions, inputs: RuleInputs) -> Strategy:
    rule = flower_rule(options)
    assert rule is not None, f"{options.name} is not a Flower strategy"
    kwargs = flower_kwargs(options)
    if kwargs.get("client_learning_rate", 0.0) is None:
        kwargs["client_learning_rate"] = inputs.training_lr
    return getattr(flower, rule.cls)(**RULE_DEFAULTS, **kwargs)


STRATEGIES: Mapping[str, StrategyHome] = {
    home.name: home
    for home in (
        StrategyHome(FedAvgOptions, _fedavg),
        StrategyHome(FedBNOptions, _fedavg),
        StrategyHome(
            DynamicAwareOptions, lambda o, c: DynamicAware(layout=c.layout, **RULE_DEFAULTS)
        ),
        StrategyHome(
            ScaffoldOptions,
            lambda o, c: Scaffold(
                c.layout.groups, c.layout.trainable, c.num_sites, o.server_lr, **RULE_DEFAULTS
            ),
            site=scaffold_site,
        ),
        StrategyHome(
            DittoOptions, lambda o, c: Ditto(c.layout.groups, o.lam, **RULE_DEFAULTS), ditto_site
        ),
        *(StrategyHome(options, _flower) for options in FLOWER_OPTIONS),
    )
}
"""Every strategy by its scenario name, in the order of the :data:`StrategyOptions` union."""


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
    rule = STRATEGIES[options.name].rule(options, RuleInputs(layout, training_lr, population))
    if options.dp is None:
        return rule
    counters = [k for k, group in layout.groups.items() if group == "counter"]
    return private_rule(options.dp, rule, counters, population, seed)


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


def site_parts(
    content: RecordDict, state: RecordDict, instruction: TrainInstruction
) -> list[SitePart]:
    """The site parts a train message's ``content`` asks for (with the site's kept ``state``):
    those of the strategies whose site factory recognises it (none for a strategy without a
    site side)."""
    parts = [home.site(content, state, instruction) for home in STRATEGIES.values() if home.site]
    return [part for part in parts if part is not None]
