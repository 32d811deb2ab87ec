"""The scenario schema: YAML -> frozen typed objects, one type per section.

A scenario names the cohort, the hospitals (sites) and the modality each contributes, the
held-out test set, how cases arrive (the stream), what to compare (models, strategies,
continual-learning methods), how to train, and which faults to inject. These types are the
only definition of each section: the ServerApp, the ClientApp, the sweep and the deployment
all use them (the training instruction a site receives is built from them,
:mod:`fedll.config.instruction`).

Every field is checked where it is declared; a model's arguments are checked against its
registered builder (:func:`fedll.models.check_arguments`), so an unknown or out-of-range
argument is refused here, naming ``models.<key>.<argument>``. The rules that relate sections
to each other are in :mod:`fedll.config.rules`. The sections of the cases (cohort, sites, test
set, slices) are in :mod:`fedll.config.cohort`, those of where trials run and are tracked in
:mod:`fedll.config.execution`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from fedll.config.base import Frozen as _Frozen
from fedll.config.base import Seed, SimpleName
from fedll.config.cohort import CohortConfig, SiteConfig, SliceConfig, TestConfig
from fedll.config.execution import ExecutionConfig, TrackingConfig
from fedll.config.options import ContinualOptions, FaultConfig, FineTuneOptions, named
from fedll.config.rules import RULES
from fedll.config.strategies import FedAvgOptions, StrategyOptions
from fedll.data import MAX_SITES
from fedll.federation.stream import ORDERINGS
from fedll.models import ArgumentError, check_arguments
from fedll.run.device import Precision

MAX_MODELS = 100
"""The most models a scenario compares: each is checked by building it (on PyTorch's meta
device, some 10 ms), so ten thousand would take minutes to refuse as too large a grid."""
MAX_EXCLUDE = 100
"""The most ``exclude`` entries: each trial of the grid (at most
:data:`fedll.config.rules.MAX_TRIALS`) is matched against each entry, several times a load."""


class EvaluationConfig(_Frozen):
    """How the test cases are scored after every round (:mod:`fedll.evaluation.evaluate`)."""

    slices: Literal["all", "selected"] = Field(
        default="all",
        description="all: every brain slice of a test case (whole-volume evaluation); "
        "selected: the training selection (every tumour slice plus slices.empty_fraction "
        "tumour-free ones), which flatters Dice",
    )
    surface_tolerance_mm: float = Field(
        default=2.0, ge=0, le=50, description="the tolerance of surface Dice, in mm"
    )
    precision: Precision = Field(
        default="auto",
        description="autocast of the model's forward pass on the test cases (bf16 and fp16 also "
        "lay its convolutions out channels-last); where not given, training.precision",
    )


class StreamConfig(_Frozen):
    """How training cases arrive over rounds (see :mod:`fedll.federation.stream`)."""

    ordering: list[str | list[str]] = Field(
        default_factory=lambda: ["alternating"],
        min_length=1,
        description="the order of the sites' arrivals (a grid axis): alternating, "
        "alternating-rounds, blocked or random, each with an optional :flair suffix (FLAIR "
        "first), or a list of site names, one per arrival",
    )
    arrival_batch: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [5],
        min_length=1,
        description="patients per arrival: each site's patients are cut into chunks of this "
        "many (a grid axis)",
    )
    arrivals_per_round: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1],
        min_length=1,
        description="consecutive arrivals that form one federated round (a grid axis)",
    )
    train_on: Literal["new", "all"] = Field(
        default="new",
        description="new: a site trains on the cases that arrived in the round; all: on every "
        "case of its that arrived so far",
    )

    @field_validator("ordering", mode="before")
    @classmethod
    def _listify_ordering(cls, value: Any) -> Any:
        # a single name, or a single explicit list of site names, is one grid value
        if isinstance(value, str):
            return [value]
        names = isinstance(value, list) and value and all(isinstance(v, str) for v in value)
        if names and not any(v.split(":")[0] in ORDERINGS for v in value):
            return [value]
        return value

    @field_validator("arrival_batch", "arrivals_per_round", mode="before")
    @classmethod
    def _listify_batch(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, int)) else value


class TrainingConfig(_Frozen):
    """Local training at a site, per arrival."""

    epochs: int = Field(
        default=2, ge=1, description="epochs over a site's training slices in each of its rounds"
    )
    batch_size: int = Field(default=16, ge=1, description="slices per optimiser step")
    optimizer: Literal["adam", "sgd"] = Field(default="adam", description="the sites' optimiser")
    lr: float = Field(default=1e-3, gt=0, description="the sites' learning rate")
    weight_decay: float = Field(default=0.0, ge=0, description="the optimiser's weight decay")
    momentum: float = Field(
        default=0.9, ge=0, lt=1, description="SGD's momentum (optimizer: sgd only)"
    )
    optimizer_state: Literal["reset", "keep"] = Field(
        default="reset",
        description="reset: a fresh optimiser every round; keep: the site keeps its own "
        "optimiser moments across rounds (in its context state)",
    )
    precision: Precision = Field(
        default="auto",
        description="autocast of the forward pass and loss (fp16 with a gradient scaler); "
        "parameters and optimiser stay fp32. auto: bf16 where the device computes it natively "
        "(a CPU with AVX-512 BF16 or AMX, a CUDA GPU with bf16), fp32 elsewhere",
    )


class ModelConfig(_Frozen):
    """A named model to compare: a registered builder (``name``) and its arguments (every
    other key), checked against the builder's signature and its own checks."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(
        description="the registered builder (static, static-wide, dycnn, dycnn-grouped); every "
        "other key is one of its arguments"
    )

    def kwargs(self) -> dict[str, Any]:
        """The builder's keyword arguments."""
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _buildable(self) -> ModelConfig:
        try:
            check_arguments(self.name, self.kwargs())
        except ArgumentError as error:
            loc = () if error.argument is None else (error.argument,)
            detail = PydanticCustomError("model_argument", "{message}", {"message": error.message})
            raise ValidationError.from_exception_data(
                "ModelConfig", [InitErrorDetails(type=detail, loc=loc, input=self.kwargs())]
            ) from None
        return self


class Scenario(_Frozen):
    """A whole scenario file, validated."""

    name: SimpleName = Field(
        default="scenario",
        description="the scenario's name: the default run directory runs/<name>, the MLflow "
        "experiment",
    )
    cohort: CohortConfig = Field(description="where the cases come from")
    cache_dir: Path | None = Field(
        default=None,
        description="where synthetic cohorts and the slice cache are kept (default: "
        "$XDG_CACHE_HOME/fedll, ~/.cache/fedll); relative to the scenario file",
    )
    slices: SliceConfig = Field(
        default=SliceConfig(), description="how volumes become 2-D training slices"
    )
    sites: list[SiteConfig] = Field(
        min_length=1,
        max_length=MAX_SITES,
        description="the hospitals, each holding one modality",
    )
    test: TestConfig = Field(default=TestConfig(), description="the held-out test set")
    evaluation: EvaluationConfig = Field(
        default=EvaluationConfig(), description="how test cases are scored after every round"
    )
    stream: StreamConfig = Field(
        default=StreamConfig(), description="how the sites' cases arrive over rounds"
    )
    models: dict[SimpleName, ModelConfig] = Field(
        min_length=1,
        max_length=MAX_MODELS,
        description="the models to compare, by name (a grid axis)",
    )
    strategies: list[StrategyOptions] = Field(
        default_factory=lambda: [FedAvgOptions(name="fedavg")],
        min_length=1,
        description="server strategies, each a name or a name and its options (a grid axis)",
    )
    cl: list[ContinualOptions] = Field(
        default_factory=lambda: [FineTuneOptions(name="finetune")],
        min_length=1,
        description="continual-learning methods at the sites, each a name or a name and its "
        "options (a grid axis)",
    )
    joint: bool = Field(
        default=False,
        description="also train one model per model x seed on every site's cases pooled "
        "(no stream, no federation): the upper bound",
    )
    seeds: list[Seed] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="one trial per seed (a grid axis): it seeds the initial weights, the "
        "sites' training, a random ordering and the faults' draws",
    )
    exclude: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=MAX_EXCLUDE,
        description="grid points to leave out: each entry maps axis names (model, ordering, "
        "arrival_batch, arrivals_per_round, strategy, cl, seed) to one value; a trial matching "
        "every key of an entry is not run (joint trials are never excluded)",
    )
    training: TrainingConfig = Field(
        default=TrainingConfig(), description="local training at a site, per arrival"
    )
    faults: list[FaultConfig] = Field(
        default_factory=list, description="faults injected at sites (at most one per site)"
    )
    execution: ExecutionConfig = Field(
        default=ExecutionConfig(), description="how the sweep uses the machine or a cluster"
    )
    tracking: TrackingConfig = Field(
        default=TrackingConfig(), description="where finished trials are also logged"
    )

    @model_validator(mode="before")
    @classmethod
    def _evaluation_precision(cls, data: Any) -> Any:
        """``evaluation.precision``, where not given, is ``training.precision`` (so a scenario
        written before the key existed, with ``training.precision: fp32``, keeps its fp32
        evaluation and its fingerprints)."""
        if not isinstance(data, dict):
            return data
        evaluation, training = data.get("evaluation") or {}, data.get("training") or {}
        if not isinstance(evaluation, dict) or not isinstance(training, dict):
            return data
        precision = training.get("precision", "auto")
        if "precision" in evaluation or precision not in get_args(Precision):
            return data
        return {**data, "evaluation": {**evaluation, "precision": precision}}

    @field_validator("seeds", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, int)) else value

    @field_validator("strategies", "cl", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        # a name, or one mapping, is one grid value; a bare name is {name: ...}
        value = [value] if isinstance(value, (str, dict)) else value
        return [named(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        for rule in RULES:
            rule(self)
        return self

    def synthetic_patients(self) -> int:
        """Patients a synthetic cohort must hold for this scenario."""
        assert self.cohort.synthetic is not None
        need = sum(s.patients for s in self.sites) + 2 * self.test.patients_per_modality
        return self.cohort.synthetic.patients or need
