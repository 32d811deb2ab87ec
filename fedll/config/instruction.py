"""What the server tells a site to do in a round: one typed instruction, one wire format.

A site in deployment knows only its own data: the model, the training recipe, the
preprocessing and which of its cases arrived this round all come from here. The instruction
is built from the scenario's own section types (``ModelConfig``, ``TrainingConfig``,
``SliceConfig``, the CL options, ``FaultConfig``), and travels in the train message's
``ConfigRecord`` as the flat kebab-case keys of :func:`fedll.config.wire.flatten`
(``training.batch-size``, ``model.base-width``, ...): :meth:`TrainInstruction.to_config` and
:meth:`TrainInstruction.from_config` are the only two functions that touch those keys, so
the ServerApp and the ClientApp cannot disagree on one.

Keys a Flower strategy adds for itself (``proximal-mu``, ``local-norm``, ``server-round``)
are fields too; keys outside the instruction (what other Flower strategies or mods put into a
config, and the keys a strategy's site part reads itself: Ditto's, in :mod:`strategies.ditto`)
are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedll.config.options import ContinualOptions, FaultConfig, FineTuneOptions
from fedll.config.schema import ModelConfig, SliceConfig, TrainingConfig
from fedll.config.wire import JSON_SUFFIX, flatten, unflatten
from fedll.errors import ConfigError


class StateKey(BaseModel):
    """What a site's kept state is bound to (:mod:`fedll.federation.site_state`): the scenario's
    trial and its fingerprint, and the federation: the Flower run id of the run that started the
    trial (a run resumed from the server's checkpoint keeps it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trial: str = Field(min_length=1)
    fingerprint: str = Field(min_length=1)
    federation: str = Field(min_length=1)


class TrainInstruction(BaseModel):
    """One site's work in one round: train on its cases ``[arrival_start, arrival_stop)``.

    ``continual`` is the CL method and ``fault`` what the scenario injects at this site; the
    strategy sets ``proximal_mu`` (FedProx), ``local_norm`` (FedBN) and ``server_round``;
    ``state_key`` binds the state a site
    keeps on its disk to this run of the trial (None: a site keeps nothing on disk).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelConfig
    training: TrainingConfig
    slices: SliceConfig
    arrival_start: int = Field(ge=0)
    arrival_stop: int = Field(ge=0)
    train_on: Literal["new", "all"]
    seed: int
    threads: int = Field(default=1, ge=1)
    continual: ContinualOptions = FineTuneOptions(name="finetune")
    fault: FaultConfig | None = None
    proximal_mu: float = Field(default=0.0, ge=0)
    local_norm: bool = False
    server_round: int = Field(default=0, ge=0)
    state_key: StateKey | None = None

    def case_range(self) -> range:
        """The site's case indices to train on ("all": every case arrived so far)."""
        start = 0 if self.train_on == "all" else self.arrival_start
        return range(start, self.arrival_stop)

    def to_config(self) -> dict[str, Any]:
        """The instruction as the flat keys of a Flower ``ConfigRecord``."""
        return flatten(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainInstruction:
        """The instruction in a train message's config; ConfigError (one line) if it is not
        one. Keys that are not the instruction's are ignored."""
        fields = {name.replace("_", "-") for name in cls.model_fields}
        own = {
            key: value
            for key, value in config.items()
            if key.removesuffix(JSON_SUFFIX).split(".")[0] in fields
        }
        try:
            return cls.model_validate(unflatten(own))
        except (ValidationError, ValueError) as error:
            raise ConfigError(f"train instruction from the server: {_first(error)}") from None


def _first(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        return f"{key}: {first['msg'].removeprefix('Value error, ')}"
    return str(error)
