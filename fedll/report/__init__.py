"""The report of a run: forgetting tables and plots from ``results.csv`` (torch-free).

- :mod:`~fedll.report.read`: reading and checking results, attention and routing files;
- :mod:`~fedll.report.matrices`: each trial's Dice matrix;
- :mod:`~fedll.report.summary`: per-trial measures and the forgetting tables (mean, std, n),
  one per metric (Dice; HD95 over the detected cases, the detection rate and BraTS's HD95;
  surface Dice);
- :mod:`~fedll.report.tables`: the tables as CSV, Markdown and LaTeX;
- :mod:`~fedll.report.montage`: test slices with truth and prediction around each switch;
- :mod:`~fedll.report.attention`: how differently T2 and FLAIR inputs are routed;
- :mod:`~fedll.report.routing`: how well each layer's per-slice routing decodes the modality
  (``routing.csv``), per configuration and layer;
- :mod:`~fedll.report.plots`: learning curves, Dice-matrix heat maps, attention and routing
  plots;
- :mod:`~fedll.report.build`: ``fedll report``, all of the above from a run directory.
"""

from __future__ import annotations

from fedll.report.attention import attention_distance
from fedll.report.build import Report, build_report
from fedll.report.matrices import Matrix, checked_matrices, dice_matrix, last_round, trial_matrices
from fedll.report.read import COUNTS, check_results, read_attention, read_results, read_routing
from fedll.report.routing import routing_separation
from fedll.report.summary import (
    MEASURES,
    METRICS,
    forgetting_table,
    measures,
    round_events,
    summarise,
    trial_summary,
)
from fedll.report.tables import format_table, to_latex, to_markdown, write_tables

__all__ = [
    "COUNTS",
    "MEASURES",
    "METRICS",
    "Matrix",
    "Report",
    "attention_distance",
    "build_report",
    "check_results",
    "checked_matrices",
    "dice_matrix",
    "forgetting_table",
    "format_table",
    "last_round",
    "measures",
    "read_attention",
    "read_results",
    "read_routing",
    "round_events",
    "routing_separation",
    "summarise",
    "to_latex",
    "to_markdown",
    "trial_matrices",
    "trial_summary",
    "write_tables",
]
