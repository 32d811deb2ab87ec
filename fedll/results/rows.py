"""A trial's results as rows: per-case metrics and attention after every round (torch-free).

The rows go to the run directory through :mod:`fedll.run.store` (``trials/<id>.csv``,
``.attention.csv`` and ``.previews.npz``, the kept model ``models/<id>.safetensors``, then a
seal); ``RUN_DIR/results.csv`` concatenates the finished trials. Previews are a few predicted
test slices per round (the largest-tumour slice of the first :data:`PREVIEW_CASES` test cases
of each modality), for the report's montage of forgetting.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedll.federation.stream import Round
from fedll.results.columns import (
    ATTENTION_COLUMNS,
    METRIC_COLUMNS,
    PRIVACY_COLUMNS,
    RESULT_COLUMNS,
    ROUND_EVENTS,
    ROUTING_COLUMNS,
)

logger = logging.getLogger(__name__)

PREVIEW_CASES = 2
"""Test cases per modality whose largest-tumour slice is kept after every round."""
PREVIEW_FIELDS = ("round", "modality", "case", "image", "truth", "pred")


def preview_npz(previews: Sequence[dict[str, Any]]) -> bytes:
    """The previews as compressed ``.npz`` bytes (no pickle): ``round`` (K,) int, ``modality``
    and ``case`` (K,) str, ``image`` (K, S, S) float16, ``truth`` / ``pred`` (K, S, S) bool."""
    arrays: dict[str, np.ndarray] = {
        "round": np.array([p["round"] for p in previews], dtype=np.int64),
        "modality": np.array([p["modality"] for p in previews], dtype=str),
        "case": np.array([p["case"] for p in previews], dtype=str),
    }
    for name, dtype in (("image", np.float16), ("truth", bool), ("pred", bool)):
        stack = [np.asarray(p[name], dtype=dtype) for p in previews]
        arrays[name] = np.stack(stack) if stack else np.zeros((0, 0, 0), dtype=dtype)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def read_previews(data: bytes) -> list[dict[str, Any]]:
    """The previews of :func:`preview_npz` bytes, one dict per kept slice."""
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        columns = {name: arrays[name] for name in PREVIEW_FIELDS}
    return [
        {
            "round": int(columns["round"][k]),
            "modality": str(columns["modality"][k]),
            "case": str(columns["case"][k]),
            **{name: columns[name][k] for name in ("image", "truth", "pred")},
        }
        for k in range(len(columns["round"]))
    ]


def sealed_previews(seal: Path, previews: Path) -> list[dict[str, Any]] | None:
    """The previews in ``previews`` when the trial's ``seal`` lists the file and its SHA-256
    matches, else None (a warning says why, where the file is there but differs). The report
    reads them this way; it knows no fingerprints, so only the file is checked."""
    try:
        entry = json.loads(Path(seal).read_text())["files"][Path(previews).name]
        data = Path(previews).read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        logger.warning("%s differs from what was written; no montage for it", previews)
        return None
    try:
        return read_previews(data)
    except (OSError, ValueError, KeyError) as error:
        logger.warning("%s: unreadable previews (%s)", previews, type(error).__name__)
        return None


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
    routing_rows: list[dict] = field(default_factory=list)
    """Per round and dynamic layer: the per-slice routing's modality decoding
    (:data:`fedll.results.columns.ROUTING_COLUMNS`, :meth:`add_routing`)."""
    failures: dict[int, list[str]] = field(default_factory=dict)
    rejected: dict[int, list[str]] = field(default_factory=dict)
    previews: list[dict[str, Any]] = field(default_factory=list)
    privacy: dict[int, tuple[float, float]] = field(default_factory=dict)
    """round -> (ε spent so far, δ), for a strategy with a privacy accountant."""
    personal: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per site with a personalised model (Ditto): its ``modality`` and, per test case of
    that modality, each metric of :data:`fedll.results.columns.METRIC_COLUMNS` of its latest
    personalised model (:meth:`set_personal`)."""

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
        and surface Dice (NaN otherwise), with how they were scored (``evaluation``), and the
        personalised models' metrics (:meth:`personal_means`)."""
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
        personal = self.personal_means(modality, len(cases))
        for i, (case, score, distance, surface) in enumerate(
            zip(cases, dice, hd95, surface_dice, strict=True)
        ):
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
                    **{f"personal_{m}": values[i] for m, values in personal.items()},
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

    def add_routing(
        self, server_round: int, layer: str, slices: int, accuracy: float, chance: float
    ) -> None:
        """Add how well ``layer``'s per-slice attention decoded the modality of ``slices``
        test slices after ``server_round``."""
        self.routing_rows.append(
            {
                **self._key(),
                "round": server_round,
                "layer": layer,
                "slices": int(slices),
                "decoding_accuracy": float(accuracy),
                "chance": float(chance),
            }
        )

    def routing_frame(self) -> pd.DataFrame:
        """:attr:`routing_rows` as a frame of :data:`~fedll.results.columns.ROUTING_COLUMNS`."""
        return pd.DataFrame(self.routing_rows, columns=list(ROUTING_COLUMNS))

    def set_personal(self, site: str, modality: str, scores: Mapping[str, Sequence[float]]) -> None:
        """Keep the evaluation of ``site``'s latest personalised model on ``modality``'s test
        cases: ``scores`` holds a list per metric of :data:`fedll.results.columns.METRIC_COLUMNS`,
        in the order of the cases :meth:`add_round` is given."""
        self.personal[site] = {
            "modality": modality,
            **{m: [float(v) for v in scores[m]] for m in METRIC_COLUMNS},
        }

    def personal_means(self, modality: str, cases: int) -> dict[str, list[float]]:
        """Per metric, per test case of ``modality``: the mean over the sites of that
        modality with a personalised model (:meth:`set_personal`; NaN values skipped), NaN
        where none has one."""
        kept = [p for p in self.personal.values() if p["modality"] == modality]
        out = {}
        for metric in METRIC_COLUMNS:
            values = np.full((max(len(kept), 1), cases), np.nan)
            for row, scores in enumerate(kept):
                values[row] = scores[metric]
            finite = ~np.isnan(values)
            sums = np.where(finite, values, 0.0).sum(axis=0)
            counts = finite.sum(axis=0)
            out[metric] = [
                float(s / n) if n else float("nan") for s, n in zip(sums, counts, strict=True)
            ]
        return out

    def add_previews(
        self,
        server_round: int,
        modality: str,
        case: str,
        image: np.ndarray,
        truth: np.ndarray,
        pred: np.ndarray,
    ) -> None:
        """Keep one predicted test slice (S, S) of ``server_round`` for the montage."""
        self.previews.append(
            {
                "round": server_round,
                "modality": modality,
                "case": case,
                "image": np.asarray(image, dtype=np.float16),
                "truth": np.asarray(truth, dtype=bool),
                "pred": np.asarray(pred, dtype=bool),
            }
        )

    def snapshot(self) -> dict[str, Any]:
        """The rows and events so far, as JSON values (a checkpoint keeps them)."""
        return {
            "rows": [dict(r) for r in self.rows],
            "attention_rows": [dict(r) for r in self.attention_rows],
            "routing_rows": [dict(r) for r in self.routing_rows],
            "failures": {str(k): list(v) for k, v in self.failures.items()},
            "rejected": {str(k): list(v) for k, v in self.rejected.items()},
            "previews": base64.b64encode(preview_npz(self.previews)).decode(),
            "privacy": {str(k): list(v) for k, v in self.privacy.items()},
            "personal": {site: dict(scores) for site, scores in self.personal.items()},
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue from a :meth:`snapshot`."""
        self.rows = [dict(r) for r in snapshot["rows"]]
        self.attention_rows = [dict(r) for r in snapshot["attention_rows"]]
        # absent from an earlier fedll's checkpoints
        self.routing_rows = [dict(r) for r in snapshot.get("routing_rows", [])]
        self.failures = {int(k): list(v) for k, v in snapshot["failures"].items()}
        self.rejected = {int(k): list(v) for k, v in snapshot["rejected"].items()}
        previews = snapshot.get("previews")  # absent from an earlier fedll's checkpoints
        self.previews = read_previews(base64.b64decode(previews)) if previews else []
        privacy = snapshot.get("privacy", {})  # absent from an earlier fedll's checkpoints
        self.privacy = {int(k): (float(e), float(d)) for k, (e, d) in privacy.items()}
        self.personal = {site: dict(s) for site, s in snapshot.get("personal", {}).items()}

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        results = pd.DataFrame(self.rows, columns=list(RESULT_COLUMNS))
        for column, events in zip(ROUND_EVENTS, (self.failures, self.rejected), strict=True):
            joined = {r: ";".join(sorted(s)) for r, s in events.items()}
            results[column] = results["round"].map(joined).fillna("").astype(str)
        for k, column in enumerate(PRIVACY_COLUMNS):
            values = {r: spent[k] for r, spent in self.privacy.items()}
            results[column] = results["round"].map(values).astype(float)
        return results, pd.DataFrame(self.attention_rows, columns=list(ATTENTION_COLUMNS))


@dataclass(frozen=True, eq=False)
class TrialOutcome:
    """What a trial leaves: its result rows and the state dict of its final model (the
    global model after the last round; the trained model of a joint trial), as numpy arrays
    by parameter and buffer name."""

    results: TrialResults
    state: Mapping[str, np.ndarray]
