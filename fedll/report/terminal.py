"""The forgetting table for a terminal: the key measures, within a given width.

The files keep every measure (:mod:`fedll.report.tables`); the terminal shows, per
configuration (the model, and its setting: the values of the configuration axes that vary in
the run), the mean over
seeds of final Dice, forgetting (max), BWT and learning accuracy of each modality, then one
summary line. Names too long for their column lose their middle to an ellipsis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedll.columns import config_columns
from fedll.data import LABELS, MODALITIES

KEY_MEASURES: dict[str, str] = {  # measure -> short label in the terminal
    "final_dice": "final",
    "forgetting_max": "fgt.max",
    "bwt": "BWT",
    "learning_accuracy": "learn",
}
LEGEND = (
    "mean over seeds of final Dice, forgetting (max), BWT and learning accuracy per modality; "
    "every measure is in report.html"
)
WIDTH = 120
_GAP = "  "


def varying_axes(table: pd.DataFrame) -> list[str]:
    """The configuration axes other than ``model`` that take more than one value."""
    return [k for k in config_columns(table) if k != "model" and table[k].astype(str).nunique() > 1]


def fit(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters: where it is longer, its middle is replaced by
    an ellipsis (model names of one family differ at their ends)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head = width // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def terminal_table(table: pd.DataFrame, width: int = WIDTH) -> list[str]:
    """Lines of at most ``width`` characters: a header of two lines (modality, measure), one
    line per configuration of a forgetting table (:func:`fedll.report.summarise`), and the
    :data:`LEGEND`."""
    keys = config_columns(table)
    setting_keys = varying_axes(table)
    modalities = [m for m in MODALITIES if m in set(table["modality"])]
    configs = table.drop_duplicates(keys)[keys].astype(str)
    cells: list[list[str]] = []
    for _, config in configs.iterrows():
        rows = table[(table[keys].astype(str) == config).all(axis=1)]
        values = []
        for modality in modalities:
            row = rows[rows["modality"] == modality]
            for measure in KEY_MEASURES:
                value = float(row[f"{measure}_mean"].iloc[0]) if len(row) else np.nan
                values.append("n/a" if np.isnan(value) else f"{value:.3f}")
        seeds = str(int(rows["n_seeds"].max()))
        cells.append([seeds, *values])
    number_width = max(len(label) for label in KEY_MEASURES.values())
    numbers = len(_GAP) + len(modalities) * len(KEY_MEASURES) * (number_width + 1) + 5
    label_width = max(width - numbers, 12)
    settings = [", ".join(r[k] for k in setting_keys) for _, r in configs.iterrows()]
    setting_title = ", ".join(setting_keys)
    setting_need = max((len(t) for t in [setting_title, *settings]), default=0)
    model_need = max(len("model"), *(len(m) for m in configs["model"]))
    avail = label_width - len(_GAP) if setting_keys else label_width
    setting_width = min(setting_need, max(avail - model_need, avail // 2)) if setting_keys else 0
    model_width = min(model_need, avail - setting_width)

    def line(model: str, setting: str, seeds: str, values: Sequence[str]) -> str:
        label = fit(model, model_width).ljust(model_width)
        if setting_keys:
            label += _GAP + fit(setting, setting_width).ljust(setting_width)
        numbers_text = " ".join(v.rjust(number_width) for v in values)
        return (label + _GAP + seeds.rjust(5) + " " + numbers_text).rstrip()[:width]

    group_width = len(KEY_MEASURES) * (number_width + 1) - 1
    groups = " ".join(LABELS.get(m, m).center(group_width, "-") for m in modalities)
    prefix = " " * (model_width + (len(_GAP) + setting_width if setting_keys else 0))
    lines = [(prefix + _GAP + " " * 6 + groups).rstrip()[:width]]
    labels = list(KEY_MEASURES.values()) * len(modalities)
    lines.append(line("model", setting_title, "seeds", labels))
    for model, setting, values in zip(configs["model"], settings, cells, strict=True):
        lines.append(line(model, setting, values[0], values[1:]))
    lines.append(LEGEND if len(LEGEND) <= width else LEGEND[: width - 1] + "…")
    return lines


def trial_counts(summary: pd.DataFrame) -> tuple[int, int]:
    """Failed and rejected updates over all trials of a trial summary (0 where not counted)."""
    per_trial = summary.drop_duplicates("trial")
    return tuple(  # type: ignore[return-value]
        int(per_trial[c].sum()) if c in per_trial.columns else 0
        for c in ("failed_updates", "rejected_updates")
    )


def summary_line(
    done: int, failed: int, failed_updates: int, rejected_updates: int, not_run: int = 0
) -> str:
    """One line: trials done, failed and (where any) not run; failed and rejected updates."""
    skipped = f", {not_run} not run" if not_run else ""
    return (
        f"trials: {done} done, {failed} failed{skipped}; updates: {failed_updates} failed, "
        f"{rejected_updates} rejected"
    )
