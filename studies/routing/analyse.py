"""The routing study's comparison: each model against the equal-parameter static U-Net.

Usage: ``python studies/routing/analyse.py STUDY_DIR`` (reads ``STUDY_DIR/results.csv`` and
``attention.csv.gz``; writes ``comparison.csv``, ``tally.csv``, ``strategies.csv``,
``comparison.md``, ``plots/forgetting_vs_joint.png`` and ``plots/routing_separation.png``
there). ``run.sh`` calls it after the run.

Per trial, with fedll's definitions (docs/definitions.md; ``fedll.report``):
forgetting = the forgetting (max) of T2 and of FLAIR, averaged; switch drop = the mean Dice a
modality loses in the round after the other takes over, averaged over both; final = the mean
final Dice over both modalities. Per model, ``joint`` is the mean Dice of its joint (pooled, upper
bound) trials and ``routing TV`` the median over layers x seeds of the total-variation distance
between the T2 and FLAIR attention at the last round (0: both modalities use the kernels
alike; 1: disjoint kernels).

A difference from the baseline counts as beyond the seed spread only when the two
mean ± std intervals do not overlap (|difference| > std_model + std_baseline); anything
else is a tie.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fedll.errors import FedllError
from fedll.report import (
    attention_distance,
    last_round,
    read_attention,
    read_results,
    trial_summary,
)

BASELINE = "static-equal-params"
SETTINGS = ["arrivals_per_round", "arrival_batch", "strategy"]
MEASURES = ("forgetting", "switch_drop", "final")
LOWER_IS_BETTER = frozenset({"forgetting", "switch_drop"})
RECOMMENDED = {True: "yes", False: "no", None: "(static)"}


def per_trial(results: pd.DataFrame, tv: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its setting, model, seed, forgetting, final Dice and routing TV (the
    median over layers of ``tv``, the T2-FLAIR attention TV per trial x layer at its last
    round; NaN if static)."""
    summary = trial_summary(results)
    keys = ["trial", "model", "seed", "cl", *SETTINGS]
    trials = (
        summary.groupby(keys, sort=False)
        .agg(
            forgetting=("forgetting_max", "mean"),
            switch_drop=("switch_drop_mean", "mean"),
            final=("final_dice", "mean"),
        )
        .reset_index()
    )
    return trials.merge(tv.groupby("trial")["tv"].median(), on="trial", how="left")


def compare(trials: pd.DataFrame, models: Sequence[str] = ()) -> pd.DataFrame:
    """Per setting x model: mean and std over seeds of each measure and of the model's joint
    Dice, the differences from the baseline in the same setting, and whether each is beyond
    the seed spread (``<measure>_verdict``: better, worse, tie, n/a, baseline, or no baseline
    where the baseline has no trials in that setting).

    The baseline has no dynamic-aware trials (the scenario excludes them: for a static U-Net
    dynamic-aware aggregation is FedAvg, bit-identical), so a dynamic-aware setting is compared
    with the baseline's FedAvg trials of the same batch and arrivals per round. Rows follow
    ``models`` (the scenario's order), then any other model, then the settings.
    """
    stream = trials[trials["cl"] != "joint"]
    tv = stream.groupby([*SETTINGS, "model"], sort=False)["tv"].median()
    joint = trials[trials["cl"] == "joint"].groupby("model")["final"].agg(["mean", "std"])
    stats = (
        stream.groupby([*SETTINGS, "model"], sort=False)[list(MEASURES)]
        .agg(["mean", "std", "count"])
        .reset_index()
    )
    stats.columns = ["_".join(c).strip("_") for c in stats.columns]
    stats["joint_mean"] = stats["model"].map(joint["mean"])
    stats["joint_std"] = stats["model"].map(joint["std"])
    baseline = stats[stats["model"] == BASELINE].set_index(SETTINGS)
    rows = []
    for _, row in stats.iterrows():
        out = row.to_dict()
        key = tuple(row[SETTINGS])
        if key not in baseline.index:  # dynamic-aware: the baseline's FedAvg trials
            key = (*key[:-1], "fedavg")
        base = baseline.loc[key] if key in baseline.index else None
        for measure in (*MEASURES, "joint"):
            if base is None:
                out[f"{measure}_diff"], out[f"{measure}_verdict"] = np.nan, "no baseline"
                continue
            diff = row[f"{measure}_mean"] - base[f"{measure}_mean"]
            spread = row[f"{measure}_std"] + base[f"{measure}_std"]
            out[f"{measure}_diff"] = diff
            out[f"{measure}_verdict"] = (
                "baseline"
                if row["model"] == BASELINE
                else verdict(diff, spread, lower_is_better=measure in LOWER_IS_BETTER)
            )
        out["routing_tv"] = tv.get((*row[SETTINGS], row["model"]), np.nan)
        rows.append(out)
    table = pd.DataFrame(rows)
    order = list(dict.fromkeys([*models, *pd.unique(trials["model"])]))
    rank = {m: i for i, m in enumerate(order)}
    order = table.assign(
        _model=table["model"].map(rank),
        _strategy=table["strategy"] != "fedavg",
    ).sort_values(["_model", "arrivals_per_round", "arrival_batch", "_strategy"], kind="stable")
    return table.loc[order.index].reset_index(drop=True)


def strategy_comparison(trials: pd.DataFrame) -> pd.DataFrame:
    """Each strategy other than FedAvg against FedAvg, per model, batch and arrivals per round:
    forgetting and final Dice, the difference and its verdict (the same rule)."""
    stream = trials[trials["cl"] != "joint"]
    keys = ["model", "arrivals_per_round", "arrival_batch"]
    stats = stream.groupby([*keys, "strategy"], sort=False)[["forgetting", "final"]].agg(
        ["mean", "std"]
    )
    rows = []
    for key, frame in stats.groupby(level=keys, sort=False):
        strategies = frame.index.get_level_values("strategy")
        if "fedavg" not in strategies:
            continue
        base = frame.xs("fedavg", level="strategy").iloc[0]
        for strategy in strategies:
            if strategy == "fedavg":
                continue
            row = frame.xs(strategy, level="strategy").iloc[0]
            out = dict(zip(keys, key, strict=True), strategy=strategy)
            for measure in ("forgetting", "final"):
                diff = row[(measure, "mean")] - base[(measure, "mean")]
                spread = row[(measure, "std")] + base[(measure, "std")]
                out[f"{measure}_diff"] = diff
                out[f"{measure}_verdict"] = verdict(diff, spread, measure in LOWER_IS_BETTER)
            rows.append(out)
    return pd.DataFrame(rows)


def strategy_markdown(frame: pd.DataFrame) -> str:
    lines = [
        "| model | batch | strategy | forgetting (max) vs FedAvg | final Dice vs FedAvg |",
        "|---|---|---|---|---|",
    ]
    for _, r in frame.iterrows():
        cells = [f"{r[f'{m}_diff']:+.3f} ({r[f'{m}_verdict']})" for m in ("forgetting", "final")]
        lines.append(
            f"| {r['model']} | {r['arrival_batch']} | {r['strategy']} | {' | '.join(cells)} |"
        )
    return "\n".join(lines) + "\n"


def tally(table: pd.DataFrame) -> pd.DataFrame:
    """Per model, over the settings: how often each measure is better / tie / worse than the
    baseline's, and whether the model meets the study's rule for a recommendation:
    forgetting (max) better in most settings and worse in none, final Dice never worse, and
    joint Dice not worse (a model that forgets less only by learning less is not one)."""
    rows = []
    for model, frame in table[table["model"] != BASELINE].groupby("model", sort=False):
        out: dict = {"model": model, "settings": len(frame)}
        for measure in (*MEASURES, "joint"):
            counts = frame[f"{measure}_verdict"].value_counts()
            for word in ("better", "tie", "worse"):
                out[f"{measure}_{word}"] = int(counts.get(word, 0))
        out["recommended"] = (
            None
            if model.startswith("static")
            else bool(  # Dy-CNNs only; a measure without a verdict blocks it
                not frame[[f"{m}_verdict" for m in ("forgetting", "final", "joint")]]
                .isin(["n/a", "no baseline"])
                .any(axis=None)
                and out["forgetting_better"] > len(frame) / 2
                and out["forgetting_worse"] == 0
                and out["final_worse"] == 0
                and out["joint_worse"] == 0
            )
        )
        rows.append(out)
    return pd.DataFrame(rows)


def verdict(diff: float, spread: float, lower_is_better: bool) -> str:
    """ "better" / "worse" when ``|diff|`` exceeds ``spread``, else "tie"; "n/a" without a
    difference or a spread (a missing measure, or a single seed: no claim either way)."""
    if not np.isfinite(diff) or not np.isfinite(spread):
        return "n/a"
    if abs(diff) <= spread:
        return "tie"
    better = diff < 0 if lower_is_better else diff > 0
    return "better" if better else "worse"


def setting_label(per_round: int, batch: int, strategy: str) -> str:
    where = "stream" if int(per_round) == 1 else f"federation ({strategy})"
    return f"{where}, batch {batch}"


def to_markdown(table: pd.DataFrame) -> str:
    """The main table: one line per setting x model, each measure with its difference from
    the baseline and the verdict."""
    lines = [
        "| setting | model | forgetting (max) | switch drop | final Dice | joint Dice "
        "| routing TV |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(r: pd.Series, measure: str) -> str:
        mean, std = r[f"{measure}_mean"], r[f"{measure}_std"]
        if not np.isfinite(mean):
            return "n/a"
        text = f"{mean:.3f} ± {std:.3f}" if np.isfinite(std) else f"{mean:.3f}"
        diff, word = r.get(f"{measure}_diff", np.nan), r.get(f"{measure}_verdict", "")
        if np.isfinite(diff) and word != "baseline":
            text += f" ({diff:+.3f}, {'**' + word + '**' if word != 'tie' else word})"
        return text

    for _, r in table.iterrows():
        setting = setting_label(r["arrivals_per_round"], r["arrival_batch"], r["strategy"])
        tv = "" if not np.isfinite(r["routing_tv"]) else f"{r['routing_tv']:.3f}"
        lines.append(
            f"| {setting} | {r['model']} | {cell(r, 'forgetting')} | {cell(r, 'switch_drop')} "
            f"| {cell(r, 'final')} | {cell(r, 'joint')} | {tv} |"
        )
    return "\n".join(lines) + "\n"


def main_table(table: pd.DataFrame) -> str:
    """The compact view: per model, forgetting (max) in each setting (mean ± std; ▼ lower and
    ▲ higher than the baseline beyond the seed spread), joint Dice and the median routing TV."""
    settings = list(dict.fromkeys(tuple(r) for r in table[SETTINGS].itertuples(index=False)))
    marks = {"better": " ▼", "worse": " ▲"}
    head = [setting_label(*k) for k in settings]
    lines = [
        "| model | " + " | ".join(head) + " | joint Dice | routing TV |",
        "|---|" + "---|" * (len(head) + 2),
    ]
    for model, frame in table.groupby("model", sort=False):
        by = frame.set_index(SETTINGS)
        cells = []
        for key in settings:
            if key not in by.index:
                cells.append("")
                continue
            r = by.loc[key]
            mark = marks.get(r["forgetting_verdict"], "")
            cells.append(f"{r['forgetting_mean']:.2f} ± {r['forgetting_std']:.2f}{mark}")
        first = frame.iloc[0]
        joint = f"{first['joint_mean']:.2f} ± {first['joint_std']:.2f}"
        joint += {"better": " ▲", "worse": " ▼"}.get(first["joint_verdict"], "")
        tv = frame["routing_tv"].median()
        tv_text = f"{tv:.3f}" if np.isfinite(tv) else ""
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {joint} | {tv_text} |")
    return "\n".join(lines) + "\n"


def tally_markdown(tallied: pd.DataFrame) -> str:
    """Per model: better / tie / worse counts over the settings, and the rule's verdict."""
    lines = [
        "| model | forgetting (max) | switch drop | final Dice | joint Dice | recommended |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in tallied.iterrows():
        cells = [
            " / ".join(str(r[f"{m}_{w}"]) for w in ("better", "tie", "worse"))
            for m in (*MEASURES, "joint")
        ]
        lines.append(f"| {r['model']} | {' | '.join(cells)} | {RECOMMENDED[r['recommended']]} |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path) -> None:
    """Forgetting vs joint Dice per setting, one point per model (mean ± std over seeds)."""
    from matplotlib.figure import Figure

    groups = list(table.groupby(SETTINGS, sort=False))
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    fig = Figure(figsize=(5 * cols, 4 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    models = list(dict.fromkeys(table["model"]))
    colors = {m: f"C{i % 10}" for i, m in enumerate(models)}
    for ax, (setting, frame) in zip(axes, groups, strict=False):
        for _, r in frame.iterrows():
            ax.errorbar(
                r["joint_mean"],
                r["forgetting_mean"],
                xerr=r["joint_std"],
                yerr=r["forgetting_std"],
                fmt="s" if r["model"].startswith("static") else "o",
                color=colors[r["model"]],
                label=r["model"],
                capsize=3,
            )
        ax.set(title=setting_label(*setting), xlabel="joint Dice", ylabel="forgetting (max)")
        ax.grid(alpha=0.3)
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def plot_routing(results: pd.DataFrame, tv: pd.DataFrame, path: Path) -> None:
    """Does routing separate the modalities? Per setting, a heat map of ``tv``, the T2-FLAIR
    attention TV at the last round (median over seeds), one row per Dy-CNN model, one column
    per layer."""
    from matplotlib.figure import Figure

    keys = results.drop_duplicates("trial").set_index("trial")[["model", "cl", *SETTINGS]]
    tv = tv.join(keys, on="trial")
    tv = tv[tv["cl"] != "joint"]
    layers = list(pd.unique(tv["layer"]))
    groups = list(tv.groupby(SETTINGS, sort=False))
    # the scale ends at the largest TV seen (at least 0.05), written into each cell: near-0
    # values must stay readable, and the colour bar says how far from 1 (disjoint) they are
    top = max(0.05, float(np.nanmax(tv["tv"])) if len(tv) else 0.05)
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    fig = Figure(figsize=(5.5 * cols, 3.8 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    axes = axes[: len(groups)]
    image = None
    for ax, (setting, frame) in zip(axes, groups, strict=True):
        grid = frame.groupby(["model", "layer"])["tv"].median().unstack("layer")
        grid = grid.reindex(columns=layers)
        values = grid.to_numpy()
        image = ax.imshow(values, vmin=0, vmax=top, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                color = "black" if value > 0.6 * top else "white"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=5, color=color)
        ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
        ax.set_yticks(range(len(grid)), grid.index, fontsize=7)
        ax.set_title(setting_label(*setting), fontsize="small")
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="TV(T2, FLAIR), last round")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(study: Path) -> None:
    results = read_results(study / "results.csv")
    attention = read_attention(study / "attention.csv.gz")
    scenario = study / "scenario.yaml"
    models = list(yaml.safe_load(scenario.read_text())["models"]) if scenario.exists() else []
    tv = last_round(attention_distance(attention))  # per trial x layer
    trials = per_trial(results, tv)
    table = compare(trials, models)
    tallied = tally(table)
    by_strategy = strategy_comparison(trials)
    table.to_csv(study / "comparison.csv", index=False)
    tallied.to_csv(study / "tally.csv", index=False)
    by_strategy.to_csv(study / "strategies.csv", index=False)
    text = (
        "Forgetting (max), mean ± std over seeds; ▼ / ▲: lower / higher than "
        f"{BASELINE}'s beyond the seed spread (joint Dice: ▲ / ▼ higher / lower).\n\n"
        + main_table(table)
        + f"\nEvery measure against {BASELINE}; (difference, verdict).\n\n"
        + to_markdown(table)
        + "\nPer model over the settings: better / tie / worse than the baseline.\n\n"
        + tally_markdown(tallied)
        + "\nDynamic-aware aggregation against FedAvg, same model and batch (federation).\n\n"
        + strategy_markdown(by_strategy)
    )
    (study / "comparison.md").write_text(text)
    plot(table, study / "plots" / "forgetting_vs_joint.png")
    plot_routing(results, tv, study / "plots" / "routing_separation.png")
    sys.stdout.write(text)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: analyse.py STUDY_DIR")
    try:
        main(Path(sys.argv[1]))
    except FedllError as error:  # a missing or malformed results/attention file: one line
        sys.stderr.write(f"analyse.py: {error}\n")
        sys.exit(2)
