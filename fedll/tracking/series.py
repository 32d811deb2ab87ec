"""What a tracker logs of one trial, from its collected results (pure, torch-free).

Per round: the Dice of each evaluated modality (``dice/T2``: the mean over its test cases),
the attention entropy of each dynamic layer for each modality's inputs
(``attention_entropy/<layer>/<modality>``: nats of the mean kernel mass, log K for uniform
routing), and the failed and rejected updates (``updates/failed``, ``updates/rejected``); as
text, the modality switches. fedll's results do not carry the training loss (sites report
Dice after every round, :data:`fedll.results.columns.RESULT_COLUMNS`), so none is logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fedll.data import LABELS, MODALITIES
from fedll.report.matrices import dice_matrix
from fedll.results.columns import AXES, ROUND_EVENTS


@dataclass(frozen=True)
class TrialSeries:
    """One trial's values to log: ``params`` (its axis values), ``scalars`` (tag -> [(round,
    value)]), ``switches`` ([(round, text)]) and ``final`` (measure -> value, no round)."""

    trial: str
    params: dict[str, str]
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    switches: list[tuple[int, str]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)


def trial_series(
    results: pd.DataFrame, attention: pd.DataFrame | None = None,
    summary: pd.DataFrame | None = None,
) -> TrialSeries:  # fmt: skip
    """The series of one trial's checked results rows (and its attention and trial-summary
    rows, :func:`fedll.report.trial_summary`, where given)."""
    first = results.iloc[0]
    params = {a: str(first[a]) for a in AXES if a in results.columns}
    R, arriving = dice_matrix(results)
    scalars: dict[str, list[tuple[int, float]]] = {}
    evaluated = [m for m in MODALITIES if m in set(results["modality"])]
    for modality in evaluated:
        column = R[:, MODALITIES.index(modality)]
        scalars[f"dice/{LABELS[modality]}"] = [
            (t, float(v)) for t, v in enumerate(column) if not np.isnan(v)
        ]
    for column in ROUND_EVENTS:
        if column in results.columns:
            per_round = results.groupby("round")[column].first()
            scalars[f"updates/{column}"] = [
                (int(t), float(len([s for s in str(v).split(";") if s.strip()])))
                for t, v in per_round.items()
            ]
    if attention is not None and not attention.empty:
        scalars.update(attention_entropy(attention))
    final = {}
    if summary is not None:
        for _, row in summary.iterrows():
            label = LABELS.get(row["modality"], row["modality"])
            for measure in ("final_dice", "forgetting_max", "bwt", "learning_accuracy"):
                value = float(row[measure])
                if not np.isnan(value):
                    final[f"{measure}/{label}"] = value
    return TrialSeries(
        trial=str(first["trial"]),
        params=params,
        scalars=scalars,
        switches=modality_switches(arriving),
        final=final,
    )


def attention_entropy(attention: pd.DataFrame) -> dict[str, list[tuple[int, float]]]:
    """``attention_entropy/<layer>/<modality>`` -> [(round, nats)] of one trial's attention
    rows: the entropy of the kernel mass (normalised to sum 1) per round, layer and modality."""
    out: dict[str, list[tuple[int, float]]] = {}
    grouped = attention.groupby(["layer", "modality", "round"], sort=True)["mass"]
    for (layer, modality, rnd), mass in grouped:
        p = mass.to_numpy(dtype=np.float64)
        p = p / p.sum() if p.sum() > 0 else p
        entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
        tag = f"attention_entropy/{layer}/{LABELS.get(modality, modality)}"
        out.setdefault(tag, []).append((int(rnd), entropy))
    return out


def modality_switches(arriving: list[frozenset[int]]) -> list[tuple[int, str]]:
    """[(round, "T2 -> FLAIR")] for each round whose arriving modalities differ from those of
    the last round that trained."""
    switches, last = [], frozenset()
    for t, now in enumerate(arriving):
        if not now:
            continue
        if last and now != last:
            switches.append((t, f"{_names(last)} -> {_names(now)}"))
        last = now
    return switches


def _names(modalities: frozenset[int]) -> str:
    return "+".join(LABELS[MODALITIES[m]] for m in sorted(modalities))
