"""Pictures of forgetting: per configuration, a few test slices with truth and prediction
outlined after the rounds around each switch of the arriving modality, beside the Dice curve.

The predictions come from each trial's ``trials/<id>.previews.npz`` (written by the driver
beside its results and checked against its seal, :func:`fedll.run.store.trial_previews`): the
largest-tumour slice of the first two test cases of each modality, after every round. Kept
slices are the simplest robust route: a report needs neither the models nor the cohort, and
the files are small (a few 10 kB per trial). Results without previews (an earlier fedll, a
study folder) get no montage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedll.data import LABELS, MODALITIES
from fedll.report.matrices import dice_matrix
from fedll.report.plots import (
    _SHADES,
    MODALITY_COLOURS,
    _arrival_key,
    _arrival_label,
    _save,
    _shade_rounds,
    _slug,
)
from fedll.report.read import check_results
from fedll.results.columns import config_columns
from fedll.results.rows import sealed_previews

logger = logging.getLogger(__name__)

MAX_ROWS = 8
"""At most this many rounds are shown (evenly spread over those around a switch)."""


def shown_rounds(arriving: Sequence[frozenset[int]], max_rows: int = MAX_ROWS) -> list[int]:
    """The rounds a montage shows: for every switch of the arriving modality at round ``t``
    (``arriving[t]`` and ``arriving[t - 1]`` non-empty and different), ``t - 1`` (the last
    round before it) and ``t``; the last round too. Without switches: the first trained round
    and the last. More than ``max_rows``: ``max_rows`` of them evenly spread, first and last
    kept."""
    last = len(arriving) - 1
    rounds = {last}
    for t in range(2, len(arriving)):
        if arriving[t] and arriving[t - 1] and arriving[t] != arriving[t - 1]:
            rounds.update({t - 1, t})
    if len(rounds) == 1:
        rounds.add(min(1, last))
    ordered = sorted(r for r in rounds if r >= 1) or [last]
    if len(ordered) > max_rows:
        picks = np.unique(np.linspace(0, len(ordered) - 1, max_rows).round().astype(int))
        ordered = [ordered[i] for i in picks]
    return ordered


def write_montages(results: pd.DataFrame, run_dir: Path, out_dir: Path) -> list[Path]:
    """``montage_<configuration>.png`` for each configuration whose first trial (lowest seed)
    has previews; returns the paths written."""
    results = check_results(results)
    keys = config_columns(results)
    paths = []
    for config, frame in results.groupby(keys, sort=False):
        trial = str(frame.sort_values("seed", kind="stable")["trial"].iloc[0])
        trials = Path(run_dir) / "trials"  # fedll.run.store.TrialFiles names them so
        previews = sealed_previews(trials / f"{trial}.json", trials / f"{trial}.previews.npz")
        if not previews:
            continue
        rows = frame[frame["trial"] == trial]
        title = ", ".join(f"{k}={v}" for k, v in zip(keys, config, strict=True))
        path = Path(out_dir) / f"montage_{_slug(config)}.png"
        paths.append(plot_montage(rows, previews, f"{title}, seed {rows['seed'].iloc[0]}", path))
    if paths:
        logger.info("wrote %d montages to %s", len(paths), out_dir)
    return paths


def plot_montage(
    trial_results: pd.DataFrame, previews: list[dict[str, Any]], title: str, path: Path
) -> Path:
    """One trial's montage: a row per shown round, a column per previewed case (image with
    truth in green and prediction in red, the case's Dice), the Dice curve on the right."""
    from matplotlib.figure import Figure

    R, arriving = dice_matrix(trial_results)
    rounds = shown_rounds(arriving)
    by_key = {(p["round"], p["case"]): p for p in previews}
    cases = sorted(
        {(p["modality"], p["case"]) for p in previews},
        key=lambda mc: (MODALITIES.index(mc[0]), mc[1]),
    )
    dice = trial_results.set_index(["round", "case"])["dice"].to_dict()
    cols = len(cases)
    fig = Figure(figsize=(1.6 * cols + 4.5, 1.6 * len(rounds) + 0.8))
    grid = fig.add_gridspec(len(rounds), cols + 3)
    for i, t in enumerate(rounds):
        for j, (modality, case) in enumerate(cases):
            ax = fig.add_subplot(grid[i, j])
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{LABELS[modality]} {case}", fontsize="x-small")
            if j == 0:
                label = f"round {t}\n(trained {_arrival_label(arriving[t])})"
                ax.set_ylabel(label, fontsize="small")
            kept = by_key.get((t, case))
            if kept is None:
                continue
            ax.imshow(_display(kept["image"]), cmap="gray", interpolation="nearest")
            for mask, colour in ((kept["truth"], "#33cc33"), (kept["pred"], "#ff3333")):
                if np.asarray(mask).any():
                    ax.contour(_display(mask), levels=[0.5], colors=colour, linewidths=0.9)
            if (t, case) in dice:
                ax.text(
                    0.03, 0.04, f"{dice[(t, case)]:.2f}", color="yellow", fontsize="x-small",
                    transform=ax.transAxes,
                )  # fmt: skip
    _plot_curve(fig, grid, R, arriving, rounds, cols)
    fig.suptitle(
        f"{title}: truth green, prediction red (yellow: the case's 3-D Dice)", fontsize="small"
    )
    fig.tight_layout()
    return _save(fig, path)


def _plot_curve(
    fig: Any,
    grid: Any,
    R: np.ndarray,
    arriving: Sequence[frozenset[int]],
    rounds: list[int],
    cols: int,
) -> None:
    """The montage's Dice curve, right of the ``cols`` case columns, each shown round marked."""
    from matplotlib.patches import Patch

    # the curve at a readable aspect (about 3:2), beside the first rounds, not their full height
    curve = fig.add_subplot(grid[: min(len(rounds), 2), cols:])
    _shade_rounds(curve, arriving)
    for m, modality in enumerate(MODALITIES):
        if not np.isnan(R[:, m]).all():
            curve.plot(
                range(len(R)), R[:, m], marker="o", ms=3, label=LABELS[modality],
                color=MODALITY_COLOURS[modality],
            )  # fmt: skip
    for t in rounds:
        curve.axvline(t, color="#444444", lw=0.6, alpha=0.5)
    curve.xaxis.get_major_locator().set_params(integer=True)
    curve.set_xlabel("round")
    curve.set_ylabel("mean Dice (3-D, per case)")
    curve.set_ylim(0, 1)
    curve.yaxis.set_label_position("right")
    curve.yaxis.tick_right()
    handles, _ = curve.get_legend_handles_labels()
    shaded = dict.fromkeys(_arrival_key(a) for a in arriving[1:] if a)
    handles += [Patch(color=_SHADES[k], label=f"{LABELS.get(k, k)} arriving") for k in shaded]
    curve.legend(handles=handles, fontsize="small")


def _display(slice_: np.ndarray) -> np.ndarray:
    """An (A, B) slice in RAS+ as an image: B (anterior) up, A (right) to the right."""
    return np.flipud(np.asarray(slice_, dtype=np.float32).T)
