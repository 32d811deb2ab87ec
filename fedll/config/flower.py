"""Flower's strategies as scenario options: each of ``flwr.serverapp.strategy``'s rules that
fedll offers, by its scenario name (:class:`FlowerRule`), and its option class, read from the
constructor's signature of the installed Flower (:func:`flower_options`); the lifelong layer's
own options (``norm``, ``dp``: :class:`fedll.config.options.LayerOptions`) come with every one.
:mod:`strategies.registry` builds the rule from :func:`flower_kwargs`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, create_model

from fedll.config.options import LayerOptions


@dataclass(frozen=True)
class FlowerRule:
    """A strategy of ``flwr.serverapp.strategy`` by its scenario name: its options are the
    constructor's parameters (those of a JSON type that the lifelong layer does not own),
    under fedll's name where ``renamed`` gives one, with fedll's default where ``defaults``
    gives one and the bounds of ``bounds`` (what Flower's constructor does not check)."""

    name: str
    cls: str
    doc: str
    renamed: Mapping[str, str] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    bounds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    server_step: bool = False
    """Whether the rule steps from the average (FedAvgM, FedOpt, q-FedAvg): then only the
    parameters take its step and buffers the plain average (see strategies.lifelong)."""


LAYER_PARAMETERS = frozenset(
    {
        "fraction_train",
        "fraction_evaluate",
        "min_train_nodes",
        "min_evaluate_nodes",
        "min_available_nodes",
        "weighted_by_key",
        "arrayrecord_key",
        "configrecord_key",
        "train_metrics_aggr_fn",
        "evaluate_metrics_aggr_fn",
    }
)
"""Flower constructor parameters the lifelong layer owns (who trains, the record keys), never
scenario options."""

_OPT = {"eta": {"gt": 0}, "eta_l": {"gt": 0}, "tau": {"gt": 0}}
_BETAS = {"beta_1": {"ge": 0, "lt": 1}, "beta_2": {"ge": 0, "lt": 1}}
_BYZANTINE = {"num_malicious_nodes": {"ge": 0}, "num_nodes_to_select": {"ge": 1}}

_JSON_TYPES = (bool, int, float, str)


def flower_options(rule: FlowerRule) -> type[LayerOptions]:
    """The option class of ``rule``, from its Flower constructor's signature, named
    ``<cls>Options``: each is assigned below to a module attribute of that name, as a class
    statement would make it (pickling, a Ray task's trial, finds a class by module and name)."""
    from fedll.federation.flower_private import flower_strategy

    cls = flower_strategy(rule.cls)
    fedll_name = {flower_name: ours for ours, flower_name in rule.renamed.items()}
    fields: dict[str, Any] = {"name": (Literal[rule.name], ...)}
    for parameter in inspect.signature(cls.__init__).parameters.values():
        if parameter.name == "self" or parameter.name in LAYER_PARAMETERS:
            continue
        if parameter.annotation not in _JSON_TYPES:  # callables (Bulyan's selection_rule)
            continue
        default = rule.defaults.get(parameter.name, parameter.default)
        required = default is inspect.Parameter.empty
        annotation = parameter.annotation if default is not None else parameter.annotation | None
        fields[fedll_name.get(parameter.name, parameter.name)] = (
            annotation,
            Field(
                default=... if required else default,
                description=f"{rule.cls}({parameter.name}=...)",
                **rule.bounds.get(parameter.name, {}),
            ),
        )
    options = create_model(  # type: ignore[call-overload]
        f"{rule.cls}Options",
        __base__=LayerOptions,
        __doc__=rule.doc,
        __module__=__name__,
        **fields,
    )
    options.flower = rule
    return options


FedProxOptions = flower_options(
    FlowerRule(
        "fedprox",
        "FedProx",
        "FedProx (Li et al. 2020): FedAvg, and a proximal term mu/2 ||w - w_global||^2 at sites.",
        renamed={"mu": "proximal_mu"},
        defaults={"proximal_mu": 0.01},
        bounds={"proximal_mu": {"ge": 0}},
    )
)

FedAvgMOptions = flower_options(
    FlowerRule(
        "fedavgm",
        "FedAvgM",
        "FedAvgM (Hsu et al. 2019): server momentum on the average's pseudo-gradient.",
        renamed={"server_lr": "server_learning_rate"},
        defaults={"server_momentum": 0.9},
        bounds={"server_learning_rate": {"gt": 0}, "server_momentum": {"ge": 0, "lt": 1}},
        server_step=True,
    )
)

FedAdagradOptions = flower_options(
    FlowerRule(
        "fedadagrad",
        "FedAdagrad",
        "FedAdagrad (Reddi et al. 2021): an adaptive server step (Adagrad) on the average.",
        bounds=_OPT,
        server_step=True,
    )
)

FedAdamOptions = flower_options(
    FlowerRule(
        "fedadam",
        "FedAdam",
        "FedAdam (Reddi et al. 2021): an adaptive server step (Adam) on the average.",
        bounds={**_OPT, **_BETAS},
        server_step=True,
    )
)

FedYogiOptions = flower_options(
    FlowerRule(
        "fedyogi",
        "FedYogi",
        "FedYogi (Reddi et al. 2021): an adaptive server step (Yogi) on the average.",
        bounds={**_OPT, **_BETAS},
        server_step=True,
    )
)

FedMedianOptions = flower_options(
    FlowerRule(
        "fedmedian",
        "FedMedian",
        "FedMedian (Yin et al. 2018): the coordinate-wise median of the round's updates.",
    )
)

FedTrimmedAvgOptions = flower_options(
    FlowerRule(
        "fedtrimmedavg",
        "FedTrimmedAvg",
        "Trimmed mean (Yin et al. 2018): per coordinate, the mean without the beta share of "
        "largest and smallest values.",
        bounds={"beta": {"ge": 0, "lt": 0.5}},
    )
)

KrumOptions = flower_options(
    FlowerRule(
        "krum",
        "Krum",
        "Krum (Blanchard et al. 2017): the update closest to its n - f - 2 nearest others.",
        bounds=_BYZANTINE,
    )
)

MultiKrumOptions = flower_options(
    FlowerRule(
        "multikrum",
        "MultiKrum",
        "Multi-Krum (Blanchard et al. 2017): the average of the num_nodes_to_select updates "
        "with the best Krum scores.",
        bounds=_BYZANTINE,
    )
)

BulyanOptions = flower_options(
    FlowerRule(
        "bulyan",
        "Bulyan",
        "Bulyan (El Mhamdi et al. 2018): Krum selection, then a trimmed mean around the median "
        "(needs 4f + 3 updates in a round; with fewer the model is kept).",
        bounds=_BYZANTINE,
    )
)

QFedAvgOptions = flower_options(
    FlowerRule(
        "qfedavg",
        "QFedAvg",
        "q-FedAvg (Li et al. 2020): updates re-weighted by the sites' loss to the power q "
        "(fairness); client_learning_rate defaults to the scenario's training.lr.",
        defaults={"client_learning_rate": None, "train_loss_key": "train-loss"},
        bounds={"q": {"ge": 0}, "client_learning_rate": {"gt": 0}},
        server_step=True,
    )
)

FLOWER_OPTIONS: tuple[type[LayerOptions], ...] = (
    FedProxOptions,
    FedAvgMOptions,
    FedAdagradOptions,
    FedAdamOptions,
    FedYogiOptions,
    FedMedianOptions,
    FedTrimmedAvgOptions,
    KrumOptions,
    MultiKrumOptions,
    BulyanOptions,
    QFedAvgOptions,
)
"""The option class of each Flower strategy fedll offers, in the order scenario docs list them."""

FLOWER_RULES: tuple[FlowerRule, ...] = tuple(options.flower for options in FLOWER_OPTIONS)
"""Flower's strategies by scenario name (kebab case)."""


def flower_rule(options: LayerOptions) -> FlowerRule | None:
    """The Flower strategy an option set configures (None for fedll's own rules)."""
    return getattr(type(options), "flower", None)


def flower_kwargs(options: LayerOptions) -> dict[str, Any]:
    """The Flower constructor's keyword arguments for ``options`` (fedll's names mapped back
    to Flower's; ``norm`` and the other layer options left out)."""
    rule = flower_rule(options)
    assert rule is not None, f"{options.name} is not a Flower strategy"
    layer = set(LayerOptions.model_fields)
    return {
        rule.renamed.get(key, key): value
        for key, value in options.options().items()
        if key not in layer
    }
