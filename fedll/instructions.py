"""What the server tells a site to do in a round, as flat kebab-case scalars.

Flower carries these in a ``ConfigRecord``; this module keeps them typed on both ends so
the ServerApp and the ClientApp cannot disagree on a key. A site in deployment knows only
its own data: the model, the training recipe, the preprocessing and which of its cases
arrived this round all come from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from fedll.config import SliceConfig, TrainingConfig
from fedll.errors import ConfigError
from fedll.faults import Fault
from fedll.options import ContinualOptions, FineTuneOptions

_CONTINUAL = TypeAdapter(ContinualOptions)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model builder and its keyword arguments."""

    name: str
    kwargs: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "kwargs": self.kwargs}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        return cls(name=data["name"], kwargs=dict(data["kwargs"]))


@dataclass(frozen=True)
class SliceRecipe:
    """Preprocessing every site applies to its volumes."""

    size: int
    empty_fraction: float
    seed: int

    @classmethod
    def from_config(cls, cfg: SliceConfig) -> SliceRecipe:
        return cls(size=cfg.size, empty_fraction=cfg.empty_fraction, seed=cfg.seed)


@dataclass(frozen=True)
class TrainInstruction:
    """One site's work in one round: train on cases [arrival_start, arrival_stop).

    ``continual`` is the CL method and ``fault`` what the scenario injects at this site; the
    strategy adds ``proximal-mu`` (FedProx), ``local-norm`` (FedBN) and ``server-round``.
    """

    model: ModelSpec
    training: TrainingConfig
    slices: SliceRecipe
    arrival_start: int
    arrival_stop: int
    train_on: str  # "new": this round's arrivals only; "all": every case arrived so far
    seed: int
    threads: int = 1
    continual: ContinualOptions = field(default_factory=lambda: FineTuneOptions(name="finetune"))
    fault: Fault = Fault()
    proximal_mu: float = 0.0
    local_norm: bool = False
    server_round: int = 0

    def case_range(self) -> range:
        start = 0 if self.train_on == "all" else self.arrival_start
        return range(start, self.arrival_stop)

    def to_config(self) -> dict[str, Any]:
        t = self.training
        return {
            "model": self.model.to_json(),
            "epochs": t.epochs,
            "batch-size": t.batch_size,
            "optimizer": t.optimizer,
            "lr": t.lr,
            "weight-decay": t.weight_decay,
            "momentum": t.momentum,
            "optimizer-state": t.optimizer_state,
            "slice-size": self.slices.size,
            "empty-fraction": self.slices.empty_fraction,
            "slice-seed": self.slices.seed,
            "arrival-start": self.arrival_start,
            "arrival-stop": self.arrival_stop,
            "train-on": self.train_on,
            "seed": self.seed,
            "threads": self.threads,
            "cl": self.continual.model_dump_json(),
            **self.fault.to_config(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrainInstruction:
        try:
            training = TrainingConfig(
                epochs=config["epochs"],
                batch_size=config["batch-size"],
                optimizer=config["optimizer"],
                lr=config["lr"],
                weight_decay=config["weight-decay"],
                momentum=config["momentum"],
                optimizer_state=config["optimizer-state"],
            )
            return cls(
                model=ModelSpec.from_json(config["model"]),
                training=training,
                slices=SliceRecipe(
                    size=int(config["slice-size"]),
                    empty_fraction=float(config["empty-fraction"]),
                    seed=int(config["slice-seed"]),
                ),
                arrival_start=int(config["arrival-start"]),
                arrival_stop=int(config["arrival-stop"]),
                train_on=str(config["train-on"]),
                seed=int(config["seed"]),
                threads=int(config.get("threads", 1)),
                continual=_CONTINUAL.validate_json(str(config.get("cl", '{"name": "finetune"}'))),
                fault=Fault.from_config(config),
                proximal_mu=float(config.get("proximal-mu", 0.0)),
                local_norm=bool(config.get("local-norm", False)),
                server_round=int(config.get("server-round", 0)),
            )
        except ValidationError as error:
            raise ConfigError(
                f"train instruction from the server: bad cl ({error.errors()[0]['msg']})"
            ) from None
        except (KeyError, ValueError, TypeError) as error:
            raise ConfigError(
                f"train instruction from the server: bad or missing {error}"
            ) from None


def evaluate_config(model: ModelSpec, slices: SliceRecipe, threads: int = 1) -> dict[str, Any]:
    """What a site needs to evaluate the global model on its own cases."""
    return {
        "model": model.to_json(),
        "slice-size": slices.size,
        "empty-fraction": slices.empty_fraction,
        "slice-seed": slices.seed,
        "threads": threads,
    }
