"""Scenarios: the schema, its rules, the grid of trials, loading, and the site instruction.

- :mod:`~fedll.config.schema`: the scenario's sections as frozen pydantic types (the one
  definition of each: the stream, training, models, ...), with :mod:`~fedll.config.cohort`
  (the cohort, sites, test set, slices) and :mod:`~fedll.config.execution` (execution,
  tracking); :mod:`~fedll.config.base`: their base type;
- :mod:`~fedll.config.options`: the options of strategies, CL methods and faults (tagged
  unions keyed by the names used in YAML);
- :mod:`~fedll.config.rules`: the rules that relate sections to each other;
- :mod:`~fedll.config.grid`: the axes, :class:`Trial` and :func:`expand_trials`;
- :mod:`~fedll.config.load`: YAML, ``--set`` overrides, one-line errors, the resolved dump;
- :mod:`~fedll.config.instruction` and :mod:`~fedll.config.wire`: what a site is told to do
  in a round, and its Flower ``ConfigRecord`` form.
"""

from __future__ import annotations

from fedll.config.grid import JOINT, NONE, Trial, expand_trials, joint_trial
from fedll.config.instruction import TrainInstruction
from fedll.config.load import apply_overrides, dump_scenario, load_scenario, parse_scenario
from fedll.config.options import ContinualOptions, FaultConfig, option_names
from fedll.config.schema import (
    CohortConfig,
    EvaluationConfig,
    ExecutionConfig,
    ModelConfig,
    Scenario,
    SiteConfig,
    SliceConfig,
    StreamConfig,
    TrackingConfig,
    TrainingConfig,
)
from fedll.config.strategies import StrategyOptions

__all__ = [
    "JOINT",
    "NONE",
    "CohortConfig",
    "ContinualOptions",
    "EvaluationConfig",
    "ExecutionConfig",
    "TrackingConfig",
    "FaultConfig",
    "ModelConfig",
    "Scenario",
    "SiteConfig",
    "SliceConfig",
    "StrategyOptions",
    "StreamConfig",
    "TrainInstruction",
    "TrainingConfig",
    "Trial",
    "apply_overrides",
    "dump_scenario",
    "expand_trials",
    "joint_trial",
    "load_scenario",
    "option_names",
    "parse_scenario",
]
