"""Plots of a run: learning curves with the modality switches marked, Dice-matrix heat
maps, which kernels each modality's data attends to, and how well the per-slice routing
tells the modalities apart (matplotlib, no pyplot state)."""

from __future__ import annotations

import logging
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedll.atomic import atomic_path
from fedll.data import LABELS, MODALITIES
from fedll.evaluation.metrics import nan_reduce
from fedll.report.attention import attention_distance
from fedll.report.matrices import Matrix, checked_matrices, dice_matrix, has_metric, last_round
from fedll.report.read import check_results
from fedll.results.columns import config_columns

logger = logging.getLogger(__name__)

_SHADES = {"t2": "#dde9f6", "flair": "#fdebd6", "both": "#ebe1f1"}
"""The band of the rounds where a modality arrives: light tints of its colour."""
MODALITY_COLOURS = {"t2": "#1f77b4", "flair": "#ff7f0e"}
"""A modality's colour wherever a figure draws it as a line (its bands are tints of it)."""
_LINE_COLORS = (
    "#222222", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#1f77b4",
    "#ff7f0e", "#bcbd22", "#7f7f7f", "#aec7e8",
)  # fmt: skip
_LINE_STYLES = ("-", "--", ":")  # after every colour is used, the next models are dashed


def line_style(index: int) -> tuple[str, str]:
    """The colour and line style of the ``index``-th model of a plot: distinct for the first
    ``len(_LINE_COLORS) * len(_LINE_STYLES)`` models."""
    colors = len(_LINE_COLORS)
    return _LINE_COLORS[index % colors], _LINE_STYLES[index // colors % len(_LINE_STYLES)]


def write_plots(
    results: pd.DataFrame,
    out_dir: Path,
    attention: pd.DataFrame | None = None,
    routing: pd.DataFrame | None = None,
) -> list[Path]:
    """Learning curves and Dice-matrix heat maps per panel (configuration without the model),
    given ``attention`` the kernel attention of each dynamic configuration, and given
    ``routing`` (``routing.csv``, :func:`fedll.report.read.read_routing`) the per-slice
    routing's modality decoding of each panel with a dynamic model.

    Files: ``curves_<panel>.png`` (Dice, and where the results have them HD95 over the
    detected cases and surface Dice, vs round per modality: a line per model with the
    min–max band over seeds, rounds shaded by arriving modality, switches dashed),
    ``dice_matrix_<panel>.png`` (mean R over seeds, one heat map per model),
    ``attention_<configuration>.png`` and ``routing_<panel>.png``.
    """
    results = check_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    matrices = checked_matrices(results)
    curve_metrics = [
        m for m in CURVE_METRICS
        if m == "dice" or has_metric(results, m)
    ]  # fmt: skip
    by_metric = {"dice": matrices} | {
        m: {str(t): dice_matrix(f, metric=m) for t, f in results.groupby("trial", sort=False)}
        for m in curve_metrics[1:]
    }
    keys = config_columns(results)
    panel_keys = [k for k in keys if k != "model"]
    paths = []
    for panel, frame in results.groupby(panel_keys, sort=False):
        title = ", ".join(f"{k}={v}" for k, v in zip(panel_keys, panel, strict=True))
        trials = {m: list(t["trial"].unique()) for m, t in frame.groupby("model", sort=False)}
        curves = {
            metric: {
                model: [by_metric[metric][str(t)] for t in ids] for model, ids in trials.items()
            }
            for metric in curve_metrics
        }
        slug = _slug(panel)
        paths.append(_plot_curves(curves, title, out_dir / f"curves_{slug}.png"))
        paths.append(_plot_heatmaps(curves["dice"], title, out_dir / f"dice_matrix_{slug}.png"))
    if attention is not None and not attention.empty:
        att_keys = config_columns(attention)
        for config, frame in attention.groupby(att_keys, sort=False):
            title = ", ".join(f"{k}={v}" for k, v in zip(att_keys, config, strict=True))
            paths.append(_plot_attention(frame, title, out_dir / f"attention_{_slug(config)}.png"))
    if routing is not None and not routing.empty:
        routing_keys = [k for k in config_columns(routing) if k != "model"]
        for panel, frame in routing.groupby(routing_keys, sort=False):
            title = ", ".join(f"{k}={v}" for k, v in zip(routing_keys, panel, strict=True))
            paths.append(_plot_routing(frame, title, out_dir / f"routing_{_slug(panel)}.png"))
    logger.info("wrote %d plots to %s", len(paths), out_dir)
    return paths


CURVE_METRICS: dict[str, tuple[str, tuple[float, float] | None]] = {
    "dice": ("Dice", (0.0, 1.0)),
    "hd95": ("HD95 (mm, detected cases)", None),
    "surface_dice": ("surface Dice", (0.0, 1.0)),
}
"""The rows of a curves figure, where the results have the metric: its label and y range."""


def _plot_curves(curves: Mapping[str, dict[str, list[Matrix]]], title: str, path: Path) -> Path:
    """A row per metric of ``curves`` (metric -> model -> its trials' matrices), a column per
    modality: the mean over seeds by round, band min–max, rounds shaded by arrival."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    per_model = curves["dice"]
    arrivals = _common_arrivals([m for ms in per_model.values() for m in ms])
    rows = len(curves)
    fig = Figure(figsize=(5.2 * len(MODALITIES), 3.8 + 3.0 * (rows - 1)), layout="constrained")
    grid = fig.subplots(rows, len(MODALITIES), sharex=True, squeeze=False)
    for r, (metric, by_model) in enumerate(curves.items()):
        name, limits = CURVE_METRICS[metric]
        for m, (ax, modality) in enumerate(zip(grid[r], MODALITIES, strict=True)):
            if arrivals is not None:
                _shade_rounds(ax, arrivals)
            for i, (model, mats) in enumerate(by_model.items()):
                color, style = line_style(i)
                stack = _stack([R for R, _ in mats])[:, :, m]
                mean, lo, hi = (
                    nan_reduce(f, stack, axis=0) for f in (np.nanmean, np.nanmin, np.nanmax)
                )
                x = np.arange(stack.shape[1])
                label = f"{model} ({len(mats)} seeds)"
                ax.plot(x, mean, color=color, ls=style, marker="o", ms=3, lw=1.6, label=label)
                if len(mats) > 1:
                    ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
            ax.set(title=f"{name} on {LABELS[modality]}", xlim=(0, None))
            if limits is not None:
                ax.set_ylim(*limits)
            else:
                ax.set_ylim(0, None)
            if r == rows - 1:
                ax.set_xlabel("round")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
        grid[r][0].set_ylabel(f"{name.split(' (')[0]} (mean over seeds,\nband min–max)")
    axes = grid[0]
    handles, _ = axes[0].get_legend_handles_labels()
    if arrivals is not None:
        present = {_arrival_key(a) for a in arrivals if a}
        handles += [
            Patch(color=_SHADES[k], label=f"{LABELS.get(k, k)} arriving")
            for k in _SHADES
            if k in present
        ]
    else:
        title += "  (arrivals differ between seeds: rounds not shaded)"
    fig.legend(handles=handles, loc="outside right center", fontsize="small")
    fig.suptitle(title, fontsize="medium")
    return _save(fig, path)


def _plot_heatmaps(per_model: dict[str, list[Matrix]], title: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    arrivals = _common_arrivals([m for ms in per_model.values() for m in ms])
    rounds = max(R.shape[0] for ms in per_model.values() for R, _ in ms)
    fig = Figure(
        figsize=(min(2.5 + 0.55 * rounds, 16), 0.4 + 1.45 * len(per_model)), layout="constrained"
    )
    axes = fig.subplots(len(per_model), 1, squeeze=False)[:, 0]
    image = None
    for ax, (model, mats) in zip(axes, per_model.items(), strict=True):
        mean = nan_reduce(np.nanmean, _stack([R for R, _ in mats]), axis=0).T  # (M, T + 1)
        image = ax.imshow(mean, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        if rounds <= 24:
            for (m, t), value in np.ndenumerate(mean):
                if not np.isnan(value):
                    ax.text(t, m, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if value < 0.6 else "black")  # fmt: skip
        ax.set_yticks(range(len(MODALITIES)), [LABELS[m] for m in MODALITIES])
        step = max(1, rounds // 24)
        ticks = list(range(0, rounds, step))
        labels = [str(t) for t in ticks]
        if arrivals is not None:
            labels = [f"{t}\n{_arrival_label(arrivals[t])}" if t else "0" for t in ticks]
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.set_title(f"{model} ({len(mats)} seeds)", fontsize="small", loc="left")
    axes[-1].set_xlabel("round (and arriving modality)" if arrivals is not None else "round")
    fig.colorbar(image, ax=list(axes), label="Dice", shrink=0.9)
    # a narrow figure (few rounds) would cut a one-line title at both sides
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 11)), fontsize="medium")
    return _save(fig, path)


def _plot_attention(frame: pd.DataFrame, title: str, path: Path) -> Path:
    """Final-round attention share per layer x kernel for T2 and FLAIR inputs and their
    difference; the per-layer TV distance at the final round and over rounds (mean over seeds)."""
    from matplotlib.figure import Figure

    final = last_round(frame)
    layers = list(pd.unique(frame["layer"]))
    kernels = sorted(pd.unique(frame["kernel"]), key=_natural_key)
    mass = final.groupby(["modality", "layer", "kernel"])["mass"].mean()
    shares = {}
    for modality in MODALITIES:
        grid = np.array([[mass.get((modality, la, k), np.nan) for k in kernels] for la in layers])
        sums = np.nansum(grid, axis=1, keepdims=True)
        shares[modality] = np.divide(grid, sums, out=np.full_like(grid, np.nan), where=sums > 0)
    tv = attention_distance(frame)
    tv_final = last_round(tv)
    tv_layer = tv_final.groupby("layer")["tv"].mean().reindex(layers).to_numpy()
    tv_round = tv.groupby(["round", "layer"])["tv"].mean().unstack("layer")

    height = max(2.4, 0.25 * len(layers) + 1.3)
    fig = Figure(figsize=(13, height + 3.4), layout="constrained")
    axes = fig.subplot_mosaic(
        [["t2", "flair", "diff"], ["tv", "tv", "rounds"]], height_ratios=[height, 2.8]
    )
    step = max(1, len(kernels) // 16)
    for name in ("t2", "flair", "diff"):
        ax = axes[name]
        if name == "diff":
            values = shares["flair"] - shares["t2"]
            limit = max(nan_reduce(np.nanmax, np.abs(values)), 1e-6)
            image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
            ax.set_title("FLAIR − T2 share", fontsize="medium")
            fig.colorbar(image, ax=ax, shrink=0.9)
        else:
            image = ax.imshow(shares[name], vmin=0, vmax=1, cmap="magma", aspect="auto")
            ax.set_title(f"{LABELS[name]} inputs: attention share", fontsize="medium")
            if name == "flair":
                fig.colorbar(image, ax=[axes["t2"], ax], shrink=0.9)
        ax.set_yticks(range(len(layers)), layers if name == "t2" else [], fontsize=7)
        ax.set_xticks(range(0, len(kernels), step), [str(k) for k in kernels[::step]], fontsize=7)
        ax.set_xlabel("kernel")
    ax = axes["tv"]
    bars = ax.bar(range(len(layers)), tv_layer, color="#555555")
    ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(layers)), layers, fontsize=7, rotation=30, ha="right")
    ax.set(title="TV(T2, FLAIR) per layer, final round", ylabel="total variation")
    ax.set_ylim(0, max(nan_reduce(np.nanmax, tv_layer) * 1.25, 1e-3))
    ax = axes["rounds"]
    x, rows = tv_round.index.to_numpy(), tv_round.to_numpy()
    lo, hi = nan_reduce(np.nanmin, rows, axis=1), nan_reduce(np.nanmax, rows, axis=1)
    ax.fill_between(x, lo, hi, color="#222222", alpha=0.18, lw=0, label="min–max over layers")
    ax.plot(x, nan_reduce(np.nanmean, rows, axis=1), color="#222222", label="mean over layers")
    ax.set(title="TV(T2, FLAIR) by round", xlabel="round", ylim=(0, None))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.suptitle(f"{title}  ({frame['trial'].nunique()} seeds)", fontsize="medium")
    return _save(fig, path)


def _plot_routing(frame: pd.DataFrame, title: str, path: Path) -> Path:
    """A panel's per-slice routing separation: the modality decoding accuracy per layer at each
    trial's last round, and its mean over layers by round; a line per model (mean over seeds,
    band min–max), the chance level (the larger modality's share) dashed grey."""
    from matplotlib.figure import Figure

    layers = list(pd.unique(frame["layer"]))
    rounds = sorted(pd.unique(frame["round"]))
    final = last_round(frame)
    width = max(5.2, 0.32 * len(layers) + 2.2)
    fig = Figure(figsize=(width + 7.4, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True, width_ratios=[width, 5.2])
    for i, (model, rows) in enumerate(frame.groupby("model", sort=False)):
        color, style = line_style(i)
        own = final[final["model"] == model]
        by_layer = own.groupby(["trial", "layer"])["decoding_accuracy"].mean().unstack("layer")
        by_round = rows.groupby(["trial", "round"])["decoding_accuracy"].mean().unstack("round")
        seeds = rows["trial"].nunique()
        for ax, x, grid in (
            (axes[0], np.arange(len(layers)), by_layer.reindex(columns=layers).to_numpy()),
            (axes[1], np.array(rounds), by_round.reindex(columns=rounds).to_numpy()),
        ):
            mean, lo, hi = (nan_reduce(f, grid, axis=0) for f in (np.nanmean, np.nanmin, np.nanmax))
            label = f"{model} ({seeds} seeds)" if ax is axes[0] else None
            ax.plot(x, mean, color=color, ls=style, marker="o", ms=3, lw=1.6, label=label)
            if seeds > 1:
                ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
    chance = {"color": "#888888", "ls": "--", "lw": 1.0}
    layer_chance = final.groupby("layer")["chance"].mean().reindex(layers).to_numpy()
    axes[0].plot(np.arange(len(layers)), layer_chance, **chance, label="chance (larger modality)")
    axes[1].plot(rounds, frame.groupby("round")["chance"].mean().reindex(rounds), **chance)
    axes[0].set_xticks(range(len(layers)), layers, fontsize=7, rotation=30, ha="right")
    axes[0].set(title="per layer, each trial's last round", xlabel="dynamic layer")
    axes[0].set_ylabel("decoding accuracy (mean over seeds, band min–max)")
    axes[1].set(title="mean over layers, by round", xlabel="round", ylim=(0, 1.02))
    axes[1].xaxis.get_major_locator().set_params(integer=True)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.legend(loc="outside right center", fontsize="small")
    fig.suptitle(f"per-slice routing: modality decoding accuracy\n{title}", fontsize="medium")
    return _save(fig, path)


def _shade_rounds(ax: Any, arrivals: list[frozenset[int]]) -> None:
    """Shade (t-1, t) by the modalities trained in round t; dash the switch rounds."""
    for t in range(1, len(arrivals)):
        if arrivals[t]:
            ax.axvspan(t - 1, t, color=_SHADES[_arrival_key(arrivals[t])], lw=0, zorder=0)
        if t > 1 and arrivals[t] and arrivals[t - 1] and arrivals[t] != arrivals[t - 1]:
            ax.axvline(t - 1, color="#888888", ls="--", lw=0.8, zorder=1)


def _arrival_key(arriving: frozenset[int]) -> str:
    return MODALITIES[next(iter(arriving))] if len(arriving) == 1 else "both"


def _arrival_label(arriving: frozenset[int]) -> str:
    return "+".join(LABELS[MODALITIES[m]] for m in sorted(arriving)) or "-"


def _common_arrivals(mats: list[Matrix]) -> list[frozenset[int]] | None:
    """The arrival sequence shared by all trials, or None where they differ (random orders)."""
    first = mats[0][1]
    return first if all(a == first for _, a in mats) else None


def _stack(mats: list[np.ndarray]) -> np.ndarray:
    """Stack Dice matrices of possibly different lengths, NaN-padded: (S, T + 1, M)."""
    rows = max(R.shape[0] for R in mats)
    out = np.full((len(mats), rows, mats[0].shape[1]), np.nan)
    for i, R in enumerate(mats):
        out[i, : R.shape[0]] = R
    return out


def _natural_key(value: Any) -> tuple[int, float | str]:
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


def plot_files(config: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """The names of the files :func:`write_plots` writes that show configuration ``config``
    (its values of the configuration columns ``keys``): its panel's curves and Dice matrices,
    its attention plot (a static model has none) and its panel's routing plot (none where the
    panel has no dynamic model, or the run no ``routing.csv``)."""
    panel = _slug(tuple(config[k] for k in keys if k != "model"))
    own = _slug(tuple(config[k] for k in keys))
    return [
        f"curves_{panel}.png",
        f"dice_matrix_{panel}.png",
        f"attention_{own}.png",
        f"routing_{panel}.png",
    ]


def _slug(values: Any) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", "_".join(str(v) for v in values)).strip("-")


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path
