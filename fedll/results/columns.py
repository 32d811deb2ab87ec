"""The columns of fedll's result files, defined once (and free of torch, for the report).

``results.csv`` (and each trial's file) is long: one row per trial x round x evaluated
modality x test case (:data:`RESULT_COLUMNS`); ``attention.csv`` one row per trial x round x
modality x dynamic layer x kernel (:data:`ATTENTION_COLUMNS`); ``routing.csv`` one row per
trial x round x dynamic layer (:data:`ROUTING_COLUMNS`). Both start with the trial id
and its value on each grid axis (:data:`AXES`, which trial ids and ``exclude`` entries use
too). Files written by an earlier fedll lack the :data:`ADDED` columns; readers accept that.
"""

from __future__ import annotations

from collections.abc import Iterable

AXES: tuple[str, ...] = (
    "model", "ordering", "arrival_batch", "arrivals_per_round", "strategy", "cl", "seed",
)  # fmt: skip
"""The grid's axes, in the order trial ids, result columns and ``exclude`` use them."""

TRIAL_COLUMNS: tuple[str, ...] = ("trial", *AXES)
ROUND_EVENTS: tuple[str, ...] = ("failed", "rejected")
"""Per round, ";"-joined: the sites that failed (raised, or no reply) and those whose update
the strategy rejected (non-finite, wrong shape or dtype)."""
METRIC_COLUMNS: tuple[str, ...] = ("dice", "hd95", "surface_dice")
"""Per test case (:func:`fedll.evaluation.metrics.case_metrics`, 3-D over the evaluated slices):
Dice, HD95 in mm (lower is better; BraTS's 373.13 mm where the prediction is empty, which
:func:`fedll.evaluation.metrics.detected` reads back) and surface Dice at
``surface_tolerance_mm``."""
EVALUATION_COLUMNS: tuple[str, ...] = ("evaluated_slices", "surface_tolerance_mm")
"""How the case was scored: ``all`` (every brain slice) or ``selected`` (the training
selection), and the surface-Dice tolerance (the scenario's ``evaluation`` section)."""
PERSONAL_COLUMNS: tuple[str, ...] = tuple(f"personal_{m}" for m in METRIC_COLUMNS)
"""Per test case, with Ditto: the metrics of the personalised models of the modality's sites
(each site's latest, on its modality's test set), the mean over the sites that have one so
far; empty for other strategies and before a site of the modality has trained."""
PRIVACY_COLUMNS: tuple[str, ...] = ("epsilon", "dp_delta")
"""Per round, for a trial whose strategy keeps a privacy accountant (differential privacy
with fixed clipping): the ε spent so far, after that round, at δ ``dp_delta``; empty for
the others."""
RESULT_COLUMNS: tuple[str, ...] = (
    *TRIAL_COLUMNS, "round", "sites", "arriving", *ROUND_EVENTS, "modality", "case",
    *METRIC_COLUMNS, *EVALUATION_COLUMNS, *PRIVACY_COLUMNS, *PERSONAL_COLUMNS,
)  # fmt: skip
ATTENTION_COLUMNS: tuple[str, ...] = (
    *TRIAL_COLUMNS, "round", "modality", "layer", "kernel", "mass",
)  # fmt: skip

ROUTING_COLUMNS: tuple[str, ...] = (
    *TRIAL_COLUMNS, "round", "layer", "slices", "decoding_accuracy", "chance",
)  # fmt: skip
"""``routing.csv``, one row per trial x round x dynamic layer: how well the layer's per-slice
attention on every modality's test slices (``slices`` of them) predicts each slice's
modality (:func:`fedll.evaluation.metrics.routing.decoding_accuracy`), beside ``chance`` (the larger
modality's share). Runs of an earlier fedll, and runs without dynamic models, have none."""

ADDED: frozenset[str] = frozenset(
    {
        "arrivals_per_round", "cl", *ROUND_EVENTS, *METRIC_COLUMNS[1:], *EVALUATION_COLUMNS,
        *PRIVACY_COLUMNS,
        *PERSONAL_COLUMNS,
    }
)  # fmt: skip
"""Columns that results written by an earlier fedll may lack."""
REQUIRED_RESULT_COLUMNS: tuple[str, ...] = tuple(c for c in RESULT_COLUMNS if c not in ADDED)
REQUIRED_ATTENTION_COLUMNS: tuple[str, ...] = tuple(c for c in ATTENTION_COLUMNS if c not in ADDED)
REQUIRED_ROUTING_COLUMNS: tuple[str, ...] = tuple(c for c in ROUTING_COLUMNS if c not in ADDED)

CONFIG_COLUMNS: tuple[str, ...] = (
    *(a for a in AXES if a != "seed" and a not in ADDED),
    *(a for a in AXES if a in ADDED),
)
"""The axes that identify a configuration (its seeds are averaged), in table order: those
every fedll wrote first, so tables of old and new runs start alike."""


def config_columns(frame: Iterable[str]) -> list[str]:
    """The :data:`CONFIG_COLUMNS` a frame (or a list of column names) has: an earlier
    fedll's files lack the :data:`ADDED` ones."""
    present = set(frame)
    return [c for c in CONFIG_COLUMNS if c not in ADDED or c in present]
