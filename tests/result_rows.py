"""Hand-made result rows for the report's tests (compare, model pairs, equivalence): one
row of results.csv's required columns, in a fixed setting (alternating arrivals of 2, FedAvg)."""

from __future__ import annotations

import pandas as pd

from fedll.results.columns import REQUIRED_RESULT_COLUMNS


def result_row(
    model: str, seed: int, round_: int, arriving: str, modality: str, case: str, dice: float,
    trial: str | None = None,
) -> dict[str, object]:  # fmt: skip
    """One row: ``model``'s trial of ``seed`` (named ``trial``, or ``<model>__s<seed>``)
    scored ``dice`` on ``case`` after ``round_``."""
    return {
        "trial": trial or f"{model}__s{seed}",
        "model": model,
        "ordering": "alternating",
        "arrival_batch": 2,
        "strategy": "fedavg",
        "seed": seed,
        "round": round_,
        "sites": "",
        "arriving": arriving,
        "modality": modality,
        "case": case,
        "dice": dice,
    }


def frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """The rows as a results frame (the required columns, in order)."""
    return pd.DataFrame(rows, columns=list(REQUIRED_RESULT_COLUMNS))
