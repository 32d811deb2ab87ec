"""Per-trial results: rows of per-case Dice and attention, written atomically (torch-free).

A trial's results live in ``RUN_DIR/trials/<trial_id>.csv`` (and ``.attention.csv``);
the results file is written last and its presence marks the trial as finished, so a
rerun skips it. ``RUN_DIR/results.csv`` is the concatenation of every finished trial.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fedll.atomic import atomic_path
from fedll.columns import ATTENTION_COLUMNS, RESULT_COLUMNS, ROUND_EVENTS
from fedll.stream import Round

if TYPE_CHECKING:
    from fedll.config.grid import Trial


@dataclass
class TrialResults:
    """Accumulates one trial's evaluation after every round."""

    trial: Trial
    stream: Sequence[Round]
    rows: list[dict] = field(default_factory=list)
    attention_rows: list[dict] = field(default_factory=list)
    failures: dict[int, list[str]] = field(default_factory=dict)
    rejected: dict[int, list[str]] = field(default_factory=dict)

    def _key(self) -> dict:
        return {"trial": self.trial.trial_id, **self.trial.axis_values()}

    def add_round(
        self,
        server_round: int,
        modality: str,
        cases: Sequence[str],
        dice: Sequence[float],
        attention: dict[str, np.ndarray],
    ) -> None:
        key = self._key()
        arrivals = self.stream[server_round - 1].arrivals if server_round >= 1 else ()
        sites = ";".join(sorted({a.site for a in arrivals}))
        arriving = ";".join(sorted({a.modality for a in arrivals}))
        for case, score in zip(cases, dice, strict=True):
            self.rows.append(
                {
                    **key,
                    "round": server_round,
                    "sites": sites,
                    "arriving": arriving,
                    "modality": modality,
                    "case": case,
                    "dice": float(score),
                }
            )
        for layer, mass in attention.items():
            per_kernel = np.asarray(mass, dtype=np.float64)
            # grouped mode gives (C_out, G): report the mass per kernel of a group, averaged
            per_kernel = per_kernel.reshape(-1, per_kernel.shape[-1]).mean(axis=0)
            for k, value in enumerate(per_kernel):
                self.attention_rows.append(
                    {
                        **key,
                        "round": server_round,
                        "modality": modality,
                        "layer": layer,
                        "kernel": k,
                        "mass": float(value),
                    }
                )

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        results = pd.DataFrame(self.rows, columns=list(RESULT_COLUMNS))
        for column, events in zip(ROUND_EVENTS, (self.failures, self.rejected), strict=True):
            joined = {r: ";".join(sorted(s)) for r, s in events.items()}
            results[column] = results["round"].map(joined).fillna("").astype(str)
        return results, pd.DataFrame(self.attention_rows, columns=list(ATTENTION_COLUMNS))


def trial_path(run_dir: Path, trial: Trial) -> Path:
    return Path(run_dir) / "trials" / f"{trial.trial_id}.csv"


def atomic_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write a CSV so that a reader sees the whole file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_trial(run_dir: Path, results: TrialResults) -> Path:
    """Attention first, then results: the results file marks the trial as done."""
    frame, attention = results.frames()
    path = trial_path(run_dir, results.trial)
    atomic_csv(attention, path.with_suffix(".attention.csv"))
    atomic_csv(frame, path)
    return path


def collect(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Concatenate every finished trial into ``results.csv`` and ``attention.csv``."""
    run_dir = Path(run_dir)
    files = sorted((run_dir / "trials").glob("*.csv"))
    result_files = [f for f in files if not f.name.endswith(".attention.csv")]
    results = (
        pd.concat(
            [pd.read_csv(f, keep_default_na=False, na_values=[""]) for f in result_files],
            ignore_index=True,
        )
        if result_files
        else pd.DataFrame(columns=list(RESULT_COLUMNS))
    )
    att_files = [f.with_suffix(".attention.csv") for f in result_files]
    att_frames = [pd.read_csv(f) for f in att_files if f.exists()]
    attention = (
        pd.concat(att_frames, ignore_index=True)
        if att_frames
        else pd.DataFrame(columns=list(ATTENTION_COLUMNS))
    )
    atomic_csv(results, run_dir / "results.csv")
    atomic_csv(attention, run_dir / "attention.csv")
    return results, attention
