"""The grid of a scenario: its axes, the trials they expand into, and the ``exclude`` entries.

Any of ``models``, ``stream.ordering``, ``stream.arrival_batch``, ``stream.arrivals_per_round``,
``strategies``, ``cl`` and ``seeds`` may hold several values; the run is their product, less
the ``exclude`` entries, plus one joint (upper-bound) trial per model and seed when ``joint``
is set. :data:`fedll.results.columns.AXES` names the axes once: trial ids, ``exclude`` entries and
the result columns all read it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedll.config.options import ContinualOptions, FineTuneOptions, named
from fedll.config.strategies import StrategyOptions
from fedll.results.columns import AXES

if TYPE_CHECKING:
    from fedll.config.schema import Scenario

JOINT = "joint"
"""The ``cl`` label of a joint trial; its ordering and strategy read ``NONE``."""
NONE = "none"


class Trial(BaseModel):
    """One point of the grid: a federation run start to finish (``kind="stream"``), or the
    joint upper bound: one model trained on every site's cases pooled (``kind="joint"``;
    it has no ordering, arrival batch or strategy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    ordering: str | list[str]
    arrival_batch: int
    strategy: StrategyOptions | None
    seed: int
    cl: ContinualOptions = FineTuneOptions(name="finetune")
    kind: Literal["stream", "joint"] = "stream"
    arrivals_per_round: int = Field(default=1, ge=0, description="0 for a joint trial")

    @field_validator("strategy", "cl", mode="before")
    @classmethod
    def _by_name(cls, value: Any) -> Any:
        return named(value)

    @property
    def ordering_label(self) -> str:
        if self.kind == "joint":
            return NONE
        return self.ordering if isinstance(self.ordering, str) else ",".join(self.ordering)

    @property
    def strategy_label(self) -> str:
        return NONE if self.strategy is None else self.strategy.label

    @property
    def cl_label(self) -> str:
        return JOINT if self.kind == "joint" else self.cl.label

    @property
    def trial_id(self) -> str:
        """A stable, file-name-safe identifier."""
        if self.kind == "joint":
            return f"{self.model}__{JOINT}__s{self.seed}"
        ordering = self.ordering_label
        if not isinstance(self.ordering, str):
            ordering = "list-" + hashlib.sha1(ordering.encode()).hexdigest()[:8]
        ordering = ordering.replace(":", "-")
        # one arrival per round, the default, is left out: the ids of earlier runs stay valid
        per_round = f"__r{self.arrivals_per_round}" if self.arrivals_per_round != 1 else ""
        return (
            f"{self.model}__{ordering}__b{self.arrival_batch}{per_round}__{self.strategy_label}"
            f"__{self.cl_label}__s{self.seed}"
        )

    def axis_values(self) -> dict[str, Any]:
        """This trial's value on each axis of :data:`AXES`, as results and ``exclude`` name
        them."""
        values = {
            "model": self.model,
            "ordering": self.ordering_label,
            "arrival_batch": self.arrival_batch,
            "arrivals_per_round": self.arrivals_per_round,
            "strategy": self.strategy_label,
            "cl": self.cl_label,
            "seed": self.seed,
        }
        return {axis: values[axis] for axis in AXES}


def trial_fingerprint(scenario: Scenario, trial: Trial) -> str:
    """A hash of everything that decides a trial's results: the trial itself, its model's
    builder and arguments, and every scenario section but the grid's other values, the run's
    name, where its cache lives, how the machine is used and where the run is tracked.

    Two runs' files of one trial agree exactly when their fingerprints do (fedll is
    deterministic), so a finished trial's seal carries it and a resumed run trusts no file
    whose fingerprint differs (a trial file copied in from another run, or written before a
    setting changed)."""
    settings = scenario.model_dump(
        mode="json",
        exclude={"name", "cache_dir", "execution", "exclude", "models", "strategies", "cl",
                 "seeds", "joint", "tracking"},
    )  # fmt: skip
    settings["stream"] = {"train_on": scenario.stream.train_on}
    # settings["evaluation"] stays: how test cases are scored changes every result row
    for section in ("training", "evaluation"):  # added later; fp32 is what came before
        if settings[section]["precision"] == "fp32":
            del settings[section]["precision"]
    settings["model"] = scenario.models[trial.model].model_dump(mode="json")
    settings["trial"] = trial.model_dump(mode="json")
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def fingerprints(scenario: Scenario) -> dict[str, str]:
    """trial id -> :func:`trial_fingerprint` of every trial of ``scenario``, in grid order."""
    return {t.trial_id: trial_fingerprint(scenario, t) for t in expand_trials(scenario)}


def joint_trial(model: str, seed: int) -> Trial:
    """The joint upper-bound trial of ``model`` and ``seed``."""
    return Trial(
        model=model,
        ordering=NONE,
        arrival_batch=0,
        arrivals_per_round=0,
        strategy=None,
        seed=seed,
        kind="joint",
    )


def expand_trials(scenario: Scenario) -> list[Trial]:
    """The grid's product, in a stable order (model, ordering, batch, arrivals per round,
    strategy, cl, seed) less the ``exclude`` entries, then, with ``joint``, the joint trials
    (model, seed)."""
    entries = exclude_entries(scenario)
    trials = [t for t in axis_product(scenario) if not excluded(axis_texts(t), entries)]
    if scenario.joint:
        trials += [joint_trial(m, seed) for m in scenario.models for seed in scenario.seeds]
    return trials


def axis_product(scenario: Scenario) -> list[Trial]:
    """Every stream trial of the grid, ``exclude`` not applied."""
    axes = itertools.product(
        scenario.models,
        scenario.stream.ordering,
        scenario.stream.arrival_batch,
        scenario.stream.arrivals_per_round,
        scenario.strategies,
        scenario.cl,
        scenario.seeds,
    )
    return [
        Trial(model=m, ordering=o, arrival_batch=b, arrivals_per_round=r, strategy=s, cl=c, seed=x)
        for m, o, b, r, s, c, x in axes
    ]


def axis_texts(trial: Trial) -> dict[str, str]:
    """``trial``'s axis values as ``exclude`` entries are compared with them (computed once
    per trial: a label dumps its options)."""
    return {axis: str(value) for axis, value in trial.axis_values().items()}


def exclude_entries(scenario: Scenario) -> list[dict[str, str]]:
    """The ``exclude`` entries, their values as :func:`axis_texts` writes them."""
    return [_texts(entry) for entry in scenario.exclude]


def excluded(texts: Mapping[str, str], entries: list[dict[str, str]]) -> bool:
    """Whether a trial of :func:`axis_texts` ``texts`` matches one of ``entries``
    (:func:`exclude_entries`)."""
    return any(all(texts[key] == wanted for key, wanted in e.items()) for e in entries)


def _texts(entry: Mapping[str, Any]) -> dict[str, str]:
    return {key: _text(wanted) for key, wanted in entry.items()}


def _text(wanted: Any) -> str:
    """A value written in YAML as an axis value's text (an explicit ordering as its list)."""
    if isinstance(wanted, list):
        return ",".join(str(w) for w in wanted)
    return str(wanted)


def same(value: Any, wanted: Any) -> bool:
    """An axis value equals a value written in YAML (an explicit ordering as its list)."""
    return str(value) == _text(wanted)
