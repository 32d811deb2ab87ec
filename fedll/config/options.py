"""Typed options of what a scenario compares: the options every strategy takes, the
continual-learning (CL) methods, and the faults a scenario injects.

A strategy or CL method is a registered name plus its options, each a small frozen model
(a tagged union on ``name``); ``label`` names an option set in trial ids and results: the
name, then every option that differs from its default (``fedprox-mu0.1``). The strategies'
option classes are :mod:`fedll.config.strategies` (fedll's own) and :mod:`fedll.config.flower`
(Flower's), each a :class:`LayerOptions` (the lifelong layer's ``norm`` and ``dp``, here);
the CL methods live in :mod:`fedll.training.continual`. Their registries are keyed by these
names, and :func:`option_names` lists them (there is no second list to keep in step).
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
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


class LayerOptions(_Named):
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
        layer = [key for key in LayerOptions.model_fields if key in options]
        return {**{k: v for k, v in options.items() if k not in layer},
                **{k: options[k] for k in layer}}  # fmt: skip


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
