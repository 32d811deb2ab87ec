"""The strategies a scenario names, as options: fedll's own rules' option classes and the
:data:`StrategyOptions` union of them and Flower's (:mod:`fedll.config.flower`), tagged by
``name``.

Each is a :class:`~fedll.config.options.LayerOptions` (the lifelong layer's ``norm`` and
``dp`` come with every strategy) with its own options as fields. Its server rule and, where it
has one, its site part live in ``strategies/<name>.py``, bound to the option class by name in
:mod:`strategies.registry`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from fedll.config.flower import FLOWER_OPTIONS
from fedll.config.options import LayerOptions


class FedAvgOptions(LayerOptions):
    """FedAvg (McMahan et al. 2017): the sample-weighted mean of the round's updates."""

    name: Literal["fedavg"]


class FedBNOptions(LayerOptions):
    """FedBN (Li et al. 2021): FedAvg with normalisation layers kept local at each site."""

    name: Literal["fedbn"]
    norm: Literal["local"] = Field(
        default="local", description="local: each site keeps its own normalisation layers"
    )


class DynamicAwareOptions(LayerOptions):
    """Kernel banks averaged per kernel by attention mass, ACP by samples, the rest FedAvg."""

    name: Literal["dynamic-aware"]


class _SendsMore(LayerOptions):
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
"""Every strategy's options, tagged by ``name``: the scenario's ``strategies`` entries."""
