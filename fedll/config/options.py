"""Typed options of what a scenario compares: strategies and continual-learning (CL) methods,
and the faults it injects.

A strategy or CL method is a registered name plus its options, each a small frozen model
(a tagged union on ``name``); ``label`` names an option set in trial ids and results: the
name, then every option that differs from its default (``fedprox-mu0.1``). The strategies
themselves live in ``strategies/`` and the CL methods in :mod:`fedll.training.continual`; their
registries are keyed by these names, and :func:`option_names` lists them (there is no second
list to keep in step).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import (
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    create_model,
    model_serializer,
    model_validator,
)

from fedll.config.base import Frozen as _Frozen


class _Named(_Frozen):
    """A registered method and its options; ``label`` names this option set."""

    name: str

    @property
    def label(self) -> str:
        """The name, then each option that differs from its default (``fedprox-mu0.1``)."""
        changed = [
            f"-{_part(key, getattr(self, key))}"
            for key, value in self.options().items()
            if value != type(self).model_fields[key].default
        ]
        return self.name + "".join(changed)

    def options(self) -> dict[str, Any]:
        """Every option but the name, defaults filled in."""
        return self.model_dump(exclude={"name"})


def _part(key: str, value: Any) -> str:
    """One changed option in a label: an option set (differential privacy) by its own label,
    anything else as its key without underscores and its value (``mu0.1``)."""
    label = getattr(value, "label", None)
    return label if isinstance(label, str) else f"{key.replace('_', '')}{value}"


NormRule = Literal["average", "local"]
DP_DELTA = 1e-5
"""The default δ at which a trial's ε is stated: below 1/(number of sites) for any
federation fedll simulates, as (ε, δ)-DP needs δ well under one over the population."""


class DPOptions(_Frozen):
    """Differential privacy of a strategy: the sites' updates clipped to an L2 norm and the
    aggregate given Gaussian noise (Flower's DP wrappers; McMahan et al. 2018, Andrew et al.
    2021 for adaptive clipping). ``side``: where updates are clipped (``client``: by a mod in
    the ClientApp, before the update leaves the site); ``clipping``: a fixed norm
    (``clipping_norm``) or one learnt towards the ``target_quantile`` of unclipped updates
    (``initial_clipping_norm``, ``clip_norm_lr``, ``clipped_count_stddev``)."""

    side: Literal["server", "client"] = Field(
        default="server",
        description="where updates are clipped: by the server's wrapper, or at the site (a mod "
        "in the ClientApp) before the update leaves it",
    )
    clipping: Literal["fixed", "adaptive"] = Field(
        default="fixed",
        description="a fixed clipping norm, or one learnt towards target_quantile (no ε)",
    )
    noise_multiplier: float = Field(
        ge=0, description="z: the noise's std is z * clipping norm / updates averaged"
    )
    clipping_norm: float | None = Field(
        default=None, gt=0, description="fixed clipping: the L2 bound of each update (required)"
    )
    initial_clipping_norm: float | None = Field(
        default=None, gt=0, description="adaptive clipping: the first norm (Flower: 0.1)"
    )
    target_quantile: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="adaptive clipping: the share of updates left unclipped it aims at "
        "(Flower: 0.5)",
    )
    clip_norm_lr: float | None = Field(
        default=None, gt=0, description="adaptive clipping: the norm's geometric step (Flower: 0.2)"
    )
    clipped_count_stddev: float | None = Field(
        default=None,
        ge=0,
        description="adaptive clipping: the noise on the count of clipped updates (Flower: "
        "number of sites / 20); noise_multiplier must stay below twice it",
    )
    delta: float = Field(
        default=DP_DELTA, gt=0, lt=1, description="the δ at which the ε spent is stated"
    )

    @model_validator(mode="after")
    def _clipping_options(self) -> DPOptions:
        adaptive = ("initial_clipping_norm", "target_quantile", "clip_norm_lr",
                    "clipped_count_stddev")  # fmt: skip
        if self.clipping == "fixed":
            if self.clipping_norm is None:
                raise ValueError("clipping_norm: required with fixed clipping")
            if given := [k for k in adaptive if getattr(self, k) is not None]:
                raise ValueError(f"{given[0]}: an option of adaptive clipping (clipping: fixed)")
        elif self.clipping_norm is not None:
            raise ValueError(
                "clipping_norm: an option of fixed clipping (adaptive clipping starts from "
                "initial_clipping_norm)"
            )
        return self

    @property
    def label(self) -> str:
        """``dp-server-fixed-z1.0``, then each other option that differs from its default
        (``-c0.5`` for the clipping norm, ``-q0.3`` for the target quantile, ...)."""
        short = {"clipping_norm": "c", "initial_clipping_norm": "c", "target_quantile": "q",
                 "clip_norm_lr": "lr", "clipped_count_stddev": "sb", "delta": "d"}  # fmt: skip
        parts = [f"dp-{self.side}-{self.clipping}-z{self.noise_multiplier}"]
        for key, prefix in short.items():
            value = getattr(self, key)
            if value is not None and value != type(self).model_fields[key].default:
                parts.append(f"{prefix}{value}")
        return "-".join(parts)


class _StrategyOptions(_Named):
    """What every strategy takes, whatever its aggregation rule (the lifelong layer's options)."""

    norm: NormRule = Field(
        default="average",
        description="average: normalisation layers are aggregated like any weight; local: each "
        "site keeps its own (FedBN) and the server's copy is what the rule made of the round's",
    )
    dp: DPOptions | None = Field(
        default=None, description="differential privacy of the updates (none by default)"
    )

    @model_serializer(mode="wrap")
    def _without_privacy(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # no ``dp`` key without DP: trial fingerprints and resolved scenarios stay as before
        data = handler(self)
        if self.dp is None:
            data.pop("dp", None)
        return data

    def options(self) -> dict[str, Any]:
        """The rule's own options first, then the layer's (as labels have always named them)."""
        options = super().options()
        layer = [key for key in _StrategyOptions.model_fields if key in options]
        return {**{k: v for k, v in options.items() if k not in layer},
                **{k: options[k] for k in layer}}  # fmt: skip


class FedAvgOptions(_StrategyOptions):
    """FedAvg (McMahan et al. 2017): the sample-weighted mean of the round's updates."""

    name: Literal["fedavg"]


class FedBNOptions(_StrategyOptions):
    """FedBN (Li et al. 2021): FedAvg with normalisation layers kept local at each site."""

    name: Literal["fedbn"]
    norm: Literal["local"] = Field(
        default="local", description="local: each site keeps its own normalisation layers"
    )


class DynamicAwareOptions(_StrategyOptions):
    """Kernel banks averaged per kernel by attention mass, ACP by samples, the rest FedAvg."""

    name: Literal["dynamic-aware"]


class _SendsMore(_StrategyOptions):
    """A rule whose sites send the server more than the model: DP does not cover it."""

    _extra = "more"

    @model_validator(mode="after")
    def _no_dp(self) -> _SendsMore:
        if self.dp is not None:
            raise ValueError(
                f"dp: {self.name} sends the server more than the model ({self._extra}), "
                "which DP's clipping and noise do not cover: use dp with another strategy"
            )
        return self


class ScaffoldOptions(_SendsMore):
    """SCAFFOLD (Karimireddy et al. 2020): control variates correct each site's drift; the
    server steps ``server_lr`` along the sample-weighted mean update."""

    name: Literal["scaffold"]
    server_lr: float = Field(default=1.0, gt=0, description="the global step size (eta_g)")
    _extra = "its control-variate changes"


class DittoOptions(_SendsMore):
    """Ditto (Li et al. 2021): FedAvg, and each site trains a personalised model pulled
    toward the global one by ``lam / 2 ||v - w_global||^2``."""

    name: Literal["ditto"]
    lam: float = Field(default=0.1, ge=0, description="the proximal weight lambda")
    _extra = "its personalised models"


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

FLOWER_RULES: tuple[FlowerRule, ...] = (
    FlowerRule(
        "fedprox",
        "FedProx",
        "FedProx (Li et al. 2020): FedAvg, and a proximal term mu/2 ||w - w_global||^2 at sites.",
        renamed={"mu": "proximal_mu"},
        defaults={"proximal_mu": 0.01},
        bounds={"proximal_mu": {"ge": 0}},
    ),
    FlowerRule(
        "fedavgm",
        "FedAvgM",
        "FedAvgM (Hsu et al. 2019): server momentum on the average's pseudo-gradient.",
        renamed={"server_lr": "server_learning_rate"},
        defaults={"server_momentum": 0.9},
        bounds={"server_learning_rate": {"gt": 0}, "server_momentum": {"ge": 0, "lt": 1}},
        server_step=True,
    ),
    FlowerRule(
        "fedadagrad",
        "FedAdagrad",
        "FedAdagrad (Reddi et al. 2021): an adaptive server step (Adagrad) on the average.",
        bounds=_OPT,
        server_step=True,
    ),
    FlowerRule(
        "fedadam",
        "FedAdam",
        "FedAdam (Reddi et al. 2021): an adaptive server step (Adam) on the average.",
        bounds={**_OPT, **_BETAS},
        server_step=True,
    ),
    FlowerRule(
        "fedyogi",
        "FedYogi",
        "FedYogi (Reddi et al. 2021): an adaptive server step (Yogi) on the average.",
        bounds={**_OPT, **_BETAS},
        server_step=True,
    ),
    FlowerRule(
        "fedmedian",
        "FedMedian",
        "FedMedian (Yin et al. 2018): the coordinate-wise median of the round's updates.",
    ),
    FlowerRule(
        "fedtrimmedavg",
        "FedTrimmedAvg",
        "Trimmed mean (Yin et al. 2018): per coordinate, the mean without the beta share of "
        "largest and smallest values.",
        bounds={"beta": {"ge": 0, "lt": 0.5}},
    ),
    FlowerRule(
        "krum",
        "Krum",
        "Krum (Blanchard et al. 2017): the update closest to its n - f - 2 nearest others.",
        bounds=_BYZANTINE,
    ),
    FlowerRule(
        "multikrum",
        "MultiKrum",
        "Multi-Krum (Blanchard et al. 2017): the average of the num_nodes_to_select updates "
        "with the best Krum scores.",
        bounds=_BYZANTINE,
    ),
    FlowerRule(
        "bulyan",
        "Bulyan",
        "Bulyan (El Mhamdi et al. 2018): Krum selection, then a trimmed mean around the median "
        "(needs 4f + 3 updates in a round; with fewer the model is kept).",
        bounds=_BYZANTINE,
    ),
    FlowerRule(
        "qfedavg",
        "QFedAvg",
        "q-FedAvg (Li et al. 2020): updates re-weighted by the sites' loss to the power q "
        "(fairness); client_learning_rate defaults to the scenario's training.lr.",
        defaults={"client_learning_rate": None, "train_loss_key": "train-loss"},
        bounds={"q": {"ge": 0}, "client_learning_rate": {"gt": 0}},
        server_step=True,
    ),
)
"""Flower's strategies by scenario name (kebab case)."""

_JSON_TYPES = (bool, int, float, str)


def _flower_options(rule: FlowerRule) -> type[_StrategyOptions]:
    """The option class of ``rule``, from its Flower constructor's signature."""
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
        __base__=_StrategyOptions,
        __doc__=rule.doc,
        __module__=__name__,
        **fields,
    )
    options.flower = rule
    return options


FLOWER_OPTIONS: tuple[type[_StrategyOptions], ...] = tuple(
    _flower_options(rule) for rule in FLOWER_RULES
)
"""The option class of each of :data:`FLOWER_RULES`, in order."""

# each is this module's attribute under its class name (``FedAdamOptions``), as a class
# statement would make it: pickling (a Ray task's trial) refers to a class by module and name
globals().update({options.__name__: options for options in FLOWER_OPTIONS})


def flower_rule(options: _Named) -> FlowerRule | None:
    """The Flower strategy an option set configures (None for fedll's own rules)."""
    return getattr(type(options), "flower", None)


def flower_kwargs(options: _Named) -> dict[str, Any]:
    """The Flower constructor's keyword arguments for ``options`` (fedll's names mapped back
    to Flower's; ``norm`` and the other layer options left out)."""
    rule = flower_rule(options)
    assert rule is not None, f"{options.name} is not a Flower strategy"
    layer = set(_StrategyOptions.model_fields)
    return {
        rule.renamed.get(key, key): value
        for key, value in options.options().items()
        if key not in layer
    }


StrategyOptions = Annotated[
    Union[  # noqa: UP007
        (
            FedAvgOptions,
            FedBNOptions,
            DynamicAwareOptions,
            ScaffoldOptions,
            DittoOptions,
            *FLOWER_OPTIONS,
        )
    ],
    Field(discriminator="name"),
]


class FineTuneOptions(_Named):
    """Plain fine-tuning on each arrival (the lifelong lower bound)."""

    name: Literal["finetune"]


class EWCOptions(_Named):
    """Elastic weight consolidation (Kirkpatrick et al. 2017), online: the site keeps a diagonal
    Fisher (decayed by ``decay`` at each of its rounds) and its last weights; the penalty is
    ``weight / 2 * sum F (w - w_site)^2``."""

    name: Literal["ewc"]
    weight: float = Field(default=100.0, ge=0, description="the penalty's weight")
    decay: float = Field(
        default=1.0, ge=0, le=1, description="the Fisher's decay at each of the site's rounds"
    )


class LwFOptions(_Named):
    """Learning without forgetting (Li & Hoiem 2017): distil the model the site received,
    ``weight * BCE(student, sigmoid(teacher / temperature))`` on the site's own slices."""

    name: Literal["lwf"]
    weight: float = Field(default=1.0, ge=0, description="the distillation loss's weight")
    temperature: float = Field(default=2.0, gt=0, description="the distillation temperature T")


class ReplayOptions(_Named):
    """Experience replay: a reservoir of ``buffer`` of the site's own earlier cases is trained
    on with each arrival; nothing leaves the site."""

    name: Literal["replay"]
    buffer: int = Field(default=4, ge=1, description="earlier cases the site keeps")


ContinualOptions = Annotated[
    FineTuneOptions | EWCOptions | LwFOptions | ReplayOptions, Field(discriminator="name")
]


CorruptionName = Literal["nan", "wrong-shape", "wrong-dtype", "sign-flip"]
"""The corrupted updates named by a string (``send: sign-flip``)."""


class ScaledUpdate(_Frozen):
    """``send: {scale: F}``: the site sends ``global + F * (trained - global)``, its update's
    delta scaled by ``F`` (any finite float; ``-1`` is the sign flip, ``0`` sends the global
    model back)."""

    scale: float = Field(description="F: the factor of the update's delta")


class GaussianNoise(_Frozen):
    """``send: {gaussian: sigma}``: the site sends ``trained + N(0, sigma^2)`` on every
    floating-point tensor, drawn from the site's seed for the round."""

    gaussian: float = Field(gt=0, description="sigma: the noise's standard deviation")


_PARAMETRISED = {next(iter(form.model_fields)): form for form in (ScaledUpdate, GaussianNoise)}
"""The parametrised corruptions by their one key (``scale``, ``gaussian``)."""
_SEND_FORMS = ", ".join(typing.get_args(CorruptionName)) + ", {scale: F} or {gaussian: sigma}"


def _send_form(value: Any) -> str | None:
    """Which form of ``send`` a value is (its union tag), None when it is none of them: a
    string names a corruption, a mapping with exactly one key is a parametrised one."""
    if isinstance(value, str):
        return "named" if value in typing.get_args(CorruptionName) else None
    if isinstance(value, tuple(_PARAMETRISED.values())):
        return type(value).__name__
    if isinstance(value, dict) and len(value) == 1 and (key := next(iter(value))) in _PARAMETRISED:
        return _PARAMETRISED[key].__name__
    return None


Corruption = Annotated[
    Annotated[CorruptionName, Tag("named")]
    | Annotated[ScaledUpdate, Tag("ScaledUpdate")]
    | Annotated[GaussianNoise, Tag("GaussianNoise")],
    Discriminator(
        _send_form,
        custom_error_type="send_form",
        custom_error_message=f"expected {_SEND_FORMS}",
    ),
]
"""What a faulty site sends instead of its trained weights (``FaultConfig.send``)."""

SEND_TAGS: tuple[str, ...] = tuple(
    typing.get_args(form)[1].tag for form in typing.get_args(typing.get_args(Corruption)[0])
)
"""The tags :data:`Corruption`'s union puts into an error's location (left out of messages)."""


class FaultConfig(_Frozen):
    """A fault injected at one site (to test and show the strategies' robustness).

    ``send`` corrupts the update the site sends after training: ``nan``, ``wrong-shape`` and
    ``wrong-dtype`` are caught by the server's update check; ``sign-flip``, ``{scale: F}`` and
    ``{gaussian: sigma}`` are Byzantine: finite and well-shaped, so only a robust aggregation
    rule limits them. Draws are seeded by (trial seed, round, site), so a run is deterministic.
    """

    site: str = Field(description="the site (a sites[].name) the fault is injected at")
    raise_probability: float = Field(
        default=0.0, ge=0, le=1, description="the site raises instead of training"
    )
    raise_every: int | None = Field(
        default=None, ge=1, description="the site raises in rounds N, 2N, ... (server rounds)"
    )
    send: Corruption | None = Field(
        default=None, description="the site trains, then sends a corrupted update"
    )


def named(value: Any) -> Any:
    """A bare name is the mapping ``{name: ...}``."""
    return {"name": value} if isinstance(value, str) else value


def option_types(union: Any) -> tuple[type[_Named], ...]:
    """The option classes of a tagged union such as :data:`StrategyOptions`."""
    return typing.get_args(typing.get_args(union)[0])


def name_of(options: type[_Named]) -> str:
    """The registered name an option class is tagged with (its ``name`` literal)."""
    return typing.get_args(options.model_fields["name"].annotation)[0]


def option_names(union: Any) -> tuple[str, ...]:
    """The names a tagged union accepts, in declaration order: the one list of them."""
    return tuple(name_of(t) for t in option_types(union))
