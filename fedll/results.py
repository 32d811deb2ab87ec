"""A trial's results as rows: per-case Dice and attention after every round (torch-free).

The rows go to the run directory through :mod:`fedll.store` (``trials/<id>.csv`` and
``.attention.csv``, then a seal); ``RUN_DIR/results.csv`` concatenates the finished trials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedll.columns import ATTENTION_COLUMNS, RESULT_COLUMNS, ROUND_EVENTS
from fedll.stream import Round

if TYPE_CHECKING:
    from fedll.config.grid import Trial
    from fedll.config.schema import EvaluationConfig


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
        *,
        hd95: Sequence[float] | None = None,
        surface_dice: Sequence[float] | None = None,
        evaluation: EvaluationConfig | None = None,
    ) -> None:
        """Add one round's rows for ``modality``: per case its Dice and, where given, HD95
        and surface Dice (NaN otherwise), with how they were scored (``evaluation``)."""
        key = self._key()
        missing = [float("nan")] * len(cases)
        hd95 = missing if hd95 is None else hd95
        surface_dice = missing if surface_dice is None else surface_dice
        scored = {
            "evaluated_slices": "" if evaluation is None else evaluation.slices,
            "surface_tolerance_mm": (
                float("nan") if evaluation is None else evaluation.surface_tolerance_mm
            ),
        }
        arrivals = self.stream[server_round - 1].arrivals if server_round >= 1 else ()
        sites = ";".join(sorted({a.site for a in arrivals}))
        arriving = ";".join(sorted({a.modality for a in arrivals}))
        for case, score, distance, surface in zip(cases, dice, hd95, surface_dice, strict=True):
            self.rows.append(
                {
                    **key,
                    "round": server_round,
                    "sites": sites,
                    "arriving": arriving,
                    "modality": modality,
                    "case": case,
                    "dice": float(score),
                    "hd95": float(distance),
                    "surface_dice": float(surface),
                    **scored,
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

    def snapshot(self) -> dict[str, Any]:
        """The rows and events so far, as JSON values (a checkpoint keeps them)."""
        return {
            "rows": [dict(r) for r in self.rows],
            "attention_rows": [dict(r) for r in self.attention_rows],
            "failures": {str(k): list(v) for k, v in self.failures.items()},
            "rejected": {str(k): list(v) for k, v in self.rejected.items()},
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue from a :meth:`snapshot`."""
        self.rows = [dict(r) for r in snapshot["rows"]]
        self.attention_rows = [dict(r) for r in snapshot["attention_rows"]]
        self.failures = {int(k): list(v) for k, v in snapshot["failures"].items()}
        self.rejected = {int(k): list(v) for k, v in snapshot["rejected"].items()}

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        results = pd.DataFrame(self.rows, columns=list(RESULT_COLUMNS))
        for column, events in zip(ROUND_EVENTS, (self.failures, self.rejected), strict=True):
            joined = {r: ";".join(sorted(s)) for r, s in events.items()}
            results[column] = results["round"].map(joined).fillna("").astype(str)
        return results, pd.DataFrame(self.attention_rows, columns=list(ATTENTION_COLUMNS))


@dataclass(frozen=True)
class TrialOutcome:
    """What a finished trial hands its driver: its rows and its final global model."""

    results: TrialResults
    state: dict[str, np.ndarray]  # the final global state dict, CPU arrays
