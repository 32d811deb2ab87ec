"""The forgetting table for a terminal: the key measures, within a given width.

The files keep every measure (:mod:`fedll.report.tables`); the terminal shows, per
configuration (the model, and its setting: the values of the configuration axes that vary in
the run) and modality, the mean over seeds, ± half its 95 % interval, of final Dice,
forgetting (max), BWT and learning accuracy (a run of one seed says its rows are not
compared), then one summary line. Names too long for their column lose their middle to an ellipsis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedll.data import LABELS, MODALITIES
from fedll.report.summary import seed_interval
from fedll.results.columns import config_columns

KEY_MEASURES: dict[str, str] = {  # measure -> short label in the terminal
    "final_dice": "final",
    "forgetting_max": "fgt.max",
    "bwt": "BWT",
    "learning_accuracy": "learn",
}
LEGEND = (
    "mean over seeds ± half its 95 % interval of final Dice, forgetting (max), BWT, learning "
    "accuracy; all in report.html"
)
ONE_SEED = "one seed per configuration: its rows are not compared (a run is chaotic; add seeds)"
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


def _cell(mean: float, std: float, n: float) -> str:
    """``mean±half`` (half the 95 % interval over seeds), the mean alone for one seed."""
    if np.isnan(mean):
        return "n/a"
    low, high = seed_interval(float(mean), float(std), int(0 if np.isnan(n) else n))
    return f"{mean:.3f}" if np.isnan(low) else f"{mean:.3f}±{(high - low) / 2:.3f}"


def terminal_table(table: pd.DataFrame, width: int = WIDTH) -> list[str]:
    """Lines of at most ``width`` characters: a header, one line per configuration and
    modality of a forgetting table (:func:`fedll.report.summarise`), and the :data:`LEGEND`
    (and :data:`ONE_SEED` where no configuration has two seeds)."""
    keys = config_columns(table)
    setting_keys = varying_axes(table)
    modalities = [m for m in MODALITIES if m in set(table["modality"])]
    configs = table.drop_duplicates(keys)[keys].astype(str)
    rows: list[tuple[str, str, str, list[str]]] = []  # model, setting, modality, cells
    for _, config in configs.iterrows():
        own = table[(table[keys].astype(str) == config).all(axis=1)]
        setting = ", ".join(config[k] for k in setting_keys)
        for modality in modalities:
            row = own[own["modality"] == modality]
            if row.empty:
                continue
            cells = [str(int(row["n_seeds"].iloc[0]))]
            for measure in KEY_MEASURES:
                cells.append(_cell(*(row[f"{measure}_{s}"].iloc[0] for s in ("mean", "std", "n"))))
            rows.append((config["model"], setting, LABELS.get(modality, modality), cells))
    labels = ["seeds", *KEY_MEASURES.values()]
    number_width = max(len(text) for text in [*labels, *(c for *_, cells in rows for c in cells)])
    modality_width = max(len("modality"), *(len(r[2]) for r in rows))
    numbers = len(_GAP) + modality_width + len(labels) * (number_width + 1)
    avail = max(width - numbers, 12) - (len(_GAP) if setting_keys else 0)
    setting_title = ", ".join(setting_keys)
    setting_need = max((len(t) for t in [setting_title, *(r[1] for r in rows)]), default=0)
    model_need = max(len("model"), *(len(r[0]) for r in rows))
    # the setting whole where it can be (it tells rows apart); a long model name keeps >= 12
    setting_width = min(setting_need, max(avail - model_need, avail - 12)) if setting_keys else 0
    model_width = min(model_need, avail - setting_width)

    def line(model: str, setting: str, modality: str, values: Sequence[str]) -> str:
        label = fit(model, model_width).ljust(model_width)
        if setting_keys:
            label += _GAP + fit(setting, setting_width).ljust(setting_width)
        label += _GAP + modality.ljust(modality_width)
        return (label + " " + " ".join(v.rjust(number_width) for v in values)).rstrip()[:width]

    lines = [line("model", setting_title, "modality", labels)]
    lines += [line(*row[:3], row[3]) for row in rows]
    lines.append(LEGEND if len(LEGEND) <= width else LEGEND[: width - 1] + "…")
    if int(table["n_seeds"].max()) < 2:
        lines.append(ONE_SEED if len(ONE_SEED) <= width else ONE_SEED[: width - 1] + "…")
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
