"""Model pairs: in a run of two or more models with three or more seeds, each pair's paired
difference in the key measures, for the terminal and the page.

A table of means over seeds invites reading its differences; most of a small run's are
noise. So wherever a run can say more, it does: for every setting (the other grid axes
equal) and pair of models, the difference ``later model - earlier model`` (the scenario's
order) of final Dice, forgetting (max) and learning accuracy, averaged over the modalities
and per modality, each with its 95 % interval over seeds and test cases
(:func:`fedll.report.compare.compare`, the method whose coverage
``tests/report/test_intervals.py`` measures). A pair "differs" in a measure whose interval
excludes 0; where no interval does, the line says "no difference detected", which is not
"no difference". With more than :data:`ALL_PAIRS_UP_TO` models, every model is paired
with the first only (the lines would otherwise grow as the square of the models).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from fedll.data import LABELS, MODALITIES
from fedll.report.compare import COMPARE_COLUMNS, MEAN, STAT_COLUMNS, compare, format_cell
from fedll.report.terminal import fit

PAIR_MEASURES: dict[str, str] = {  # measure -> its label in a pair's line
    "final_dice": "final",
    "forgetting_max": "fgt.max",
    "learning_accuracy": "learn",
}
MIN_SEEDS = 3
"""The fewest common seeds a pair is compared on (with two, a t interval has one degree of
freedom and is mostly width)."""
ALL_PAIRS_UP_TO = 4
"""Up to this many models every pair is compared; with more, each model with the first."""
NO_DIFFERENCE = "no difference detected"
HEADER = (
    "model pairs: later - earlier model, mean over the modalities ± half its 95 % interval "
    "(seeds, cases); * excludes 0"
)


def model_pairs(results: pd.DataFrame, order: Sequence[str] = ()) -> pd.DataFrame:
    """The comparison rows (:func:`fedll.report.compare.compare`'s columns) of every pair of
    the run's models in every setting, for :data:`PAIR_MEASURES`, where the pair has at
    least :data:`MIN_SEEDS` common seeds; empty with fewer than two models. ``order``: the
    scenario's models, in its order (the results' models it lacks come after, as they
    appear)."""
    found = [str(m) for m in dict.fromkeys(results["model"].astype(str))]
    models = [m for m in order if m in found] + [m for m in found if m not in order]
    if len(models) < 2:
        return pd.DataFrame()
    if len(models) <= ALL_PAIRS_UP_TO:
        pairs = list(combinations(models, 2))
    else:
        pairs = [(models[0], m) for m in models[1:]]
    frames = []
    for baseline in dict.fromkeys(b for b, _ in pairs):
        arms = {a for b, a in pairs if b == baseline}
        chosen = results[results["model"].astype(str).isin({baseline, *arms})]
        frames.append(compare(chosen, baseline))
    table = pd.concat(frames, ignore_index=True)
    keep = table["measure"].isin(list(PAIR_MEASURES)) & (table["n_seeds"] >= MIN_SEEDS)
    return table[keep].reset_index(drop=True)


def setting_axes(pairs: pd.DataFrame) -> list[str]:
    """The setting columns of a pairs table that take more than one value."""
    skip = {*COMPARE_COLUMNS, *STAT_COLUMNS}
    return [c for c in pairs.columns if c not in skip and pairs[c].astype(str).nunique() > 1]


def _verdict(rows: pd.DataFrame) -> str:
    """ "differs in <measures>" where some interval excludes 0, else :data:`NO_DIFFERENCE`."""
    differing = [PAIR_MEASURES[m] for m in rows.loc[rows["excludes_zero"].astype(bool), "measure"]]
    return f"differs in {', '.join(differing)}" if differing else NO_DIFFERENCE


def _short(row: pd.Series) -> str:
    """``+0.012±0.042`` (``*`` where the interval excludes 0), or why there is none."""
    note = row["interval_note"] if isinstance(row["interval_note"], str) else ""
    if note == "undefined" or not np.isfinite(row["difference"]):
        return "n/a"
    if note:
        return f"{row['difference']:+.3f} ({note})"
    half = (row["ci_high"] - row["ci_low"]) / 2
    return f"{row['difference']:+.3f}±{half:.3f}" + ("*" if row["excludes_zero"] else "")


def _groups(pairs: pd.DataFrame):
    axes = setting_axes(pairs)
    keys = [*axes, "baseline", "arm"]
    for key, group in pairs.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        setting = ", ".join(str(v) for v in key[: len(axes)])
        yield setting, key[-2], key[-1], group


def pair_lines(pairs: pd.DataFrame | None, width: int = 120) -> list[str]:
    """The terminal's lines: :data:`HEADER`, then one per setting and pair (the measures
    averaged over the modalities, or the one modality evaluated) with its verdict; none for
    an empty table or None."""
    if pairs is None or pairs.empty:
        return []
    lines = [HEADER if len(HEADER) <= width else HEADER[: width - 1] + "…"]
    for setting, baseline, arm, group in _groups(pairs):
        modality = MEAN if (group["modality"] == MEAN).any() else group["modality"].iloc[0]
        rows = group[group["modality"] == modality].set_index("measure")
        shown = [(m, label) for m, label in PAIR_MEASURES.items() if m in rows.index]
        cells = [f"{label} {_short(rows.loc[m])}" for m, label in shown]
        verdict = _verdict(rows.reset_index())
        tail = ": " + ", ".join(cells) + f": {verdict}"
        label = f"  {arm} - {baseline}" + (f" ({setting})" if setting else "")
        label = fit(label, max(20, width - len(tail)))
        lines.append((label + tail)[:width])
    return lines


def pair_rows(pairs: pd.DataFrame) -> dict[str, object] | None:
    """The page's table of model pairs (``{"columns", "rows", "constant"}``): the setting, the pair,
    the modality (each, then both), each measure's ``difference [low, high]`` (``*`` where
    it excludes 0) and the verdict; None for an empty table."""
    if pairs.empty:
        return None
    measures = [m for m in PAIR_MEASURES if m in set(pairs["measure"])]
    labels = {m: str(pairs.loc[pairs["measure"] == m, "label"].iloc[0]) for m in measures}
    axes = setting_axes(pairs)
    order = {m: i for i, m in enumerate([*MODALITIES, MEAN])}
    rows = []
    for setting, baseline, arm, group in _groups(pairs):
        for modality in sorted(set(group["modality"]), key=lambda m: order.get(m, len(order))):
            own = group[group["modality"] == modality].set_index("measure")
            cells = [format_cell(own.loc[m]) if m in own.index else "" for m in measures]
            name = "both (mean)" if modality == MEAN else LABELS.get(modality, modality)
            verdict = _verdict(own.reset_index())
            rows.append([setting, f"{arm} − {baseline}", name, *cells, verdict][0 if axes else 1 :])
    columns = ["setting", "pair", "modality", *labels.values(), "verdict"][0 if axes else 1 :]
    return {"columns": columns, "rows": rows, "constant": [], "links": {}, "na": {}}
