"""How well each dynamic layer's per-slice routing separates the modalities, per configuration.

Reads the rows of ``routing.csv`` (:data:`fedll.results.columns.ROUTING_COLUMNS`, checked by
:func:`fedll.report.read.read_routing`): the decoding accuracy of every trial, round and
dynamic layer (:func:`fedll.evaluation.metrics.routing.decoding_accuracy`) beside its chance level.
"""

from __future__ import annotations

import pandas as pd

from fedll.report.matrices import last_round
from fedll.results.columns import config_columns

SEPARATION_COLUMNS: tuple[str, ...] = (
    "layer", "decoding_accuracy_mean", "decoding_accuracy_min", "decoding_accuracy_max",
    "chance_mean", "n_seeds",
)  # fmt: skip
"""The columns of :func:`routing_separation` after the configuration columns."""


def routing_separation(routing: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (:func:`fedll.results.columns.config_columns`: every grid axis but the
    seed) x layer, at each trial's last round: the mean, min and max over seeds of
    ``decoding_accuracy``, the mean ``chance`` and the number of seeds (trials) with the layer.

    NaN accuracies (a layer with too few slices) are skipped; configurations and layers keep
    their order of appearance.
    """
    keys = config_columns(routing)
    final = last_round(routing)
    grouped = final.groupby([*keys, "layer"], sort=False)
    accuracy = grouped["decoding_accuracy"]
    table = pd.DataFrame(
        {
            "decoding_accuracy_mean": accuracy.mean(),
            "decoding_accuracy_min": accuracy.min(),
            "decoding_accuracy_max": accuracy.max(),
            "chance_mean": grouped["chance"].mean(),
            "n_seeds": grouped["trial"].nunique(),
        }
    )
    return table.reset_index()[[*keys, *SEPARATION_COLUMNS]]
