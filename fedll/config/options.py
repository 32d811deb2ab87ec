"""Typed options of what a scenario compares: strategies and continual-learning (CL) methods,
and the faults it injects.

A strategy or CL method is a registered name plus its options, each a small frozen model
(a tagged union on ``name``); ``label`` names an option set in trial ids and results: the
name, then every option that differs from its default (``fedprox-mu0.1``). The strategies
themselves live in ``strategies/`` and the CL methods in :mod:`fedll.continual`; their
registries are keyed by these names, and :func:`option_names` lists them (there is no second
list to keep in step).
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Named(_Frozen):
    """A registered method and its options; ``label`` names this option set."""

    name: str

    @property
    def label(self) -> str:
        """The name, then each option that differs from its default (``fedprox-mu0.1``)."""
        changed = [
            f"-{key.replace('_', '')}{value}"
            for key, value in self.options().items()
            if value != type(self).model_fields[key].default
        ]
        return self.name + "".join(changed)

    def options(self) -> dict[str, Any]:
        """Every option but the name, defaults filled in."""
        return self.model_dump(exclude={"name"})


NormRule = Literal["average", "local"]
_NORM = Field(
    default="average",
    description="average: normalisation layers are averaged like any weight; local: each site "
    "keeps its own (FedBN) and the server's copy is the average of what the round's sites sent",
)


class FedAvgOptions(_Named):
    """FedAvg (McMahan et al. 2017): the sample-weighted mean of the round's updates."""

    name: Literal["fedavg"]
    norm: NormRule = _NORM


class FedBNOptions(_Named):
    """FedBN (Li et al. 2021): FedAvg with normalisation layers kept local at each site."""

    name: Literal["fedbn"]


class FedProxOptions(_Named):
    """FedProx (Li et al. 2020): FedAvg, and a proximal term mu/2 ||w - w_global||^2 at sites."""

    name: Literal["fedprox"]
    mu: float = Field(default=0.01, ge=0)
    norm: NormRule = _NORM


class DynamicAwareOptions(_Named):
    """Kernel banks averaged per kernel by attention mass, ACP by samples, the rest FedAvg."""

    name: Literal["dynamic-aware"]
    norm: NormRule = _NORM


class FedAvgMOptions(_Named):
    """FedAvgM (Hsu et al. 2019): server momentum on the average's pseudo-gradient."""

    name: Literal["fedavgm"]
    server_lr: float = Field(default=1.0, gt=0)
    server_momentum: float = Field(default=0.9, ge=0, lt=1)
    norm: NormRule = _NORM


StrategyOptions = Annotated[
    FedAvgOptions | FedBNOptions | FedProxOptions | DynamicAwareOptions | FedAvgMOptions,
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
    weight: float = Field(default=100.0, ge=0)
    decay: float = Field(default=1.0, ge=0, le=1)


class LwFOptions(_Named):
    """Learning without forgetting (Li & Hoiem 2017): distil the model the site received,
    ``weight * BCE(student, sigmoid(teacher / temperature))`` on the site's own slices."""

    name: Literal["lwf"]
    weight: float = Field(default=1.0, ge=0)
    temperature: float = Field(default=2.0, gt=0)


class ReplayOptions(_Named):
    """Experience replay: a reservoir of ``buffer`` of the site's own earlier cases is trained
    on with each arrival; nothing leaves the site."""

    name: Literal["replay"]
    buffer: int = Field(default=4, ge=1)


ContinualOptions = Annotated[
    FineTuneOptions | EWCOptions | LwFOptions | ReplayOptions, Field(discriminator="name")
]


CorruptionName = Literal["nan", "wrong-shape", "wrong-dtype", "sign-flip"]
"""The corrupted updates named by a string (``send: sign-flip``)."""


class ScaledUpdate(_Frozen):
    """``send: {scale: F}``: the site sends ``global + F * (trained - global)``, its update's
    delta scaled by ``F`` (any finite float; ``-1`` is the sign flip, ``0`` sends the global
    model back)."""

    scale: float


class GaussianNoise(_Frozen):
    """``send: {gaussian: sigma}``: the site sends ``trained + N(0, sigma^2)`` on every
    floating-point tensor, drawn from the site's seed for the round."""

    gaussian: float = Field(gt=0)


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

    site: str
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
