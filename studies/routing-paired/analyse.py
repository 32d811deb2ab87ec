"""The paired routing study's verdict: each model against the equal-parameter static U-Net.

Usage: ``python studies/routing-paired/analyse.py RUN_DIR STUDY_DIR``. It reads what
``fedll run`` and ``fedll report RUN_DIR --compare static-equal-params`` wrote in ``RUN_DIR``
(``results.csv``, ``routing.csv``, ``tables/trials.csv``,
``tables/compare_model-static-equal-params.csv``) and writes to ``STUDY_DIR``:
``results.csv.gz`` and ``routing.csv.gz`` (the collected rows), ``comparison.csv`` (the
rule's rows of fedll's comparison), ``verdict.csv`` and ``verdict.md`` (the main table and
the verdict per model), ``stage2.md`` (stage 2's design, chosen by the rule before any
frozen model ran; kept as it is once one has), ``learning.csv`` (the learning-accuracy
ratio per model, setting and modality), ``seed_groups.md`` (the rule on seeds 0-4 and 5-9
alone, which ran on different machines), ``stage3.md`` and ``comparison_norm_control.csv``
(stage 3's Dy-CNN against the baseline with per-modality normalisation, when the run has it)
and ``plots/forgetting_vs_joint.png``. ``run.sh``
calls it after the run.

The rule, fixed before the study's results were read (README.md, "The rule"): a difference
counts when fedll's 95% interval (over seeds and test cases, paired by seed and case:
``fedll.report.intervals``; a hierarchical bootstrap until issue 32) excludes 0; the
measures are averaged over T2 and FLAIR (the comparison's ``mean`` rows). A Dy-CNN
configuration is recommended when its forgetting (max) is lower than the baseline's in at
least two of the three settings and higher in none, its final Dice is lower in none, and its
joint Dice is not lower.
"""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fedll.report import to_markdown

BASELINE = "static-equal-params"
COMPARISON = f"compare_model-{BASELINE}.csv"
JOINT = "joint"
RULE_MEASURES = ("forgetting_max", "final_dice")
# stage 3 (README, "Stage 3"): the Dy-CNN arm is also judged against the baseline with a
# normalisation layer per modality, the control that tells what the dynamic kernels add
NORM_CONTROL = "static-equal-params-norm"
STAGE3_ARMS = ("dycnn-modality-hard-norm",)
STATIC = frozenset({"static", BASELINE, NORM_CONTROL})
# The run's trials came from two machines (run/invocations.txt): seeds 0-4 of stage 1 on the
# first, whose arithmetic was not recorded; seeds 5-9, and stage 2's model for all seeds, on an
# AVX-512 machine. The rule applied to each group of seeds shows whether the verdict leans on
# one machine (a secondary analysis, not part of the rule).
SEED_GROUPS = {"seeds 0-4": (0, 1, 2, 3, 4), "seeds 5-9": (5, 6, 7, 8, 9)}
# stage 2's candidates: the designs whose routing has parameters to freeze (README, The rule)
FREEZABLE = ("dycnn", "dycnn-quantiles", "dycnn-modality-soft", "dycnn-grouped")
FROZEN_SUFFIX = "-frozen"


def setting_label(row: pd.Series) -> str:
    """``stream, 5 patients``, ``federation, 5 patients`` or ``joint``."""
    if row["cl"] == JOINT:
        return JOINT
    kind = "stream" if int(row["arrivals_per_round"]) == 1 else "federation"
    return f"{kind}, {int(row['arrival_batch'])} patients"


def rule_rows(comparison: pd.DataFrame) -> pd.DataFrame:
    """The comparison's rows the rule reads: the modality-averaged forgetting (max) and final
    Dice of every setting, and the joint bound's final Dice (its joint Dice), labelled."""
    rows = comparison[comparison["modality"] == "mean"].copy()
    rows["setting"] = rows.apply(setting_label, axis=1)
    keep = rows["measure"].isin(RULE_MEASURES) & (rows["setting"] != JOINT)
    joint = (rows["setting"] == JOINT) & (rows["measure"] == "final_dice")
    rows = rows[keep | joint].copy()
    rows.loc[rows["setting"] == JOINT, "measure"] = "joint_dice"
    columns = ["arm", "setting", "measure", "difference", "ci_low", "ci_high"]
    return rows[[*columns, "excludes_zero", "n_seeds", "n_cases"]].reset_index(drop=True)


def direction(row: pd.Series) -> str:
    """``lower``, ``higher`` or ``tie`` (the interval holds 0)."""
    if not row["excludes_zero"]:
        return "tie"
    return "lower" if row["difference"] < 0 else "higher"


def verdict(rows: pd.DataFrame) -> pd.DataFrame:
    """Per arm: forgetting (max) lower / tie / higher over the settings, final Dice lower in
    how many, whether the joint Dice is lower, and ``recommended`` by the rule (``(static)``
    for the static U-Net at equal width, which is no candidate)."""
    out = []
    for arm, group in rows.groupby("arm", sort=False):
        dirs = group.assign(direction=group.apply(direction, axis=1))
        forgetting = dirs[dirs["measure"] == "forgetting_max"]["direction"]
        final = dirs[dirs["measure"] == "final_dice"]["direction"]
        joint = dirs[dirs["measure"] == "joint_dice"]["direction"]
        counts = {d: int((forgetting == d).sum()) for d in ("lower", "tie", "higher")}
        joint_lower = bool((joint == "lower").any())
        recommended = (
            counts["lower"] >= 2
            and counts["higher"] == 0
            and not (final == "lower").any()
            and not joint_lower
            and len(joint) == 1
        )
        out.append(
            {
                "arm": arm,
                "forgetting_lower": counts["lower"],
                "forgetting_tie": counts["tie"],
                "forgetting_higher": counts["higher"],
                "final_lower": int((final == "lower").sum()),
                "joint_lower": joint_lower,
                "recommended": "(static)" if arm in STATIC else ("yes" if recommended else "no"),
            }
        )
    return pd.DataFrame(out)


def stage2_choice(rows: pd.DataFrame) -> tuple[str, pd.Series]:
    """Stage 2's design: of :data:`FREEZABLE`, the one whose forgetting-(max) difference from
    the baseline, averaged over the three settings, is lowest; with every candidate's
    average (ascending). ValueError when a candidate lacks a setting."""
    forgetting = rows[(rows["measure"] == "forgetting_max") & rows["arm"].isin(FREEZABLE)]
    counts = forgetting.groupby("arm")["setting"].nunique()
    short = [arm for arm in FREEZABLE if counts.get(arm, 0) != 3]
    if short:
        raise ValueError(f"stage 2 needs all three settings of {', '.join(short)}")
    averages = forgetting.groupby("arm")["difference"].mean().sort_values()
    return str(averages.index[0]), averages


def by_seed_group(results: pd.DataFrame, groups: dict[str, tuple[int, ...]]) -> pd.DataFrame:
    """The rule's tally per arm on each group of seeds alone (fedll's paired comparison of
    that group's trials): one row per arm, per group ``<group>: lower / tie / higher`` of the
    forgetting (max) and whether the rule recommends the arm."""
    from fedll.report.compare import compare

    columns = []
    for label, seeds in groups.items():
        rows = rule_rows(compare(results[results["seed"].isin(seeds)], BASELINE))
        tally = verdict(rows).set_index("arm")
        columns.append(
            tally.apply(
                lambda v: f"{v.forgetting_lower} / {v.forgetting_tie} / {v.forgetting_higher}",
                axis=1,
            ).rename(f"{label}: forgetting lower / tie / higher")
        )
        columns.append(tally["recommended"].rename(f"{label}: recommended"))
    return pd.concat(columns, axis=1).reset_index()


def against_control(results: pd.DataFrame) -> pd.DataFrame | None:
    """The rule's rows of each :data:`STAGE3_ARMS` model against :data:`NORM_CONTROL` (fedll's
    paired comparison), or None when the run has no control."""
    from fedll.report.compare import compare

    if NORM_CONTROL not in set(results["model"]):
        return None
    arms = results[results["model"].isin([NORM_CONTROL, *STAGE3_ARMS])]
    return rule_rows(compare(arms, NORM_CONTROL))


def with_control(verdicts: pd.DataFrame, control: pd.DataFrame) -> pd.DataFrame:
    """``verdicts`` (against the baseline) with each stage-3 arm recommended only if the rule
    also holds against the control (``control``: :func:`verdict` of :func:`against_control`)."""
    passed = set(control.loc[control["recommended"] == "yes", "arm"])
    out = verdicts.copy()
    stage3 = out["arm"].isin(STAGE3_ARMS) & (out["recommended"] == "yes")
    out.loc[stage3 & ~out["arm"].isin(passed), "recommended"] = f"no (not against {NORM_CONTROL})"
    return out


def cell(row: pd.Series) -> str:
    mark = "*" if row["excludes_zero"] else ""
    return f"{row['difference']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]{mark}"


def main_table(rows: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: the difference in forgetting (max) per setting, in joint Dice, with
    intervals (``*``: excludes 0), then the tally and the verdict."""
    rows = rows.assign(cell=rows.apply(cell, axis=1))
    forgetting = rows[rows["measure"] == "forgetting_max"].pivot_table(
        index="arm", columns="setting", values="cell", aggfunc="first", sort=False
    )
    forgetting.columns = [f"forgetting (max), {c}" for c in forgetting.columns]
    joint = rows[rows["measure"] == "joint_dice"].set_index("arm")["cell"].rename("joint Dice")
    table = forgetting.join(joint).reset_index()
    tally = verdicts.assign(
        **{
            "forgetting lower / tie / higher": verdicts.apply(
                lambda v: f"{v.forgetting_lower} / {v.forgetting_tie} / {v.forgetting_higher}",
                axis=1,
            ),
            "final Dice lower in": verdicts["final_lower"],
        }
    )[["arm", "forgetting lower / tie / higher", "final Dice lower in", "recommended"]]
    return table.merge(tally, on="arm", how="left")


def learning(trials: pd.DataFrame) -> pd.DataFrame:
    """Per model, setting and modality: the mean over seeds of the learning accuracy (the Dice
    right after the modality's rounds), of the joint bound's Dice, and their ratio (the
    sizing target: >= 0.9 for the equal-parameter static U-Net)."""
    trials = trials.assign(setting=trials.apply(setting_label, axis=1))
    joint = (
        trials[trials["setting"] == JOINT]
        .groupby(["model", "modality"])["final_dice"]
        .mean()
        .rename("joint_dice")
    )
    streams = trials[trials["setting"] != JOINT]
    out = (
        streams.groupby(["model", "setting", "modality"], sort=False)
        .agg(learning_accuracy=("learning_accuracy", "mean"), seeds=("seed", "nunique"))
        .reset_index()
        .join(joint, on=["model", "modality"])
    )
    out["ratio"] = out["learning_accuracy"] / out["joint_dice"]
    return out


def plot_forgetting_vs_joint(trials: pd.DataFrame, path: Path) -> Path:
    """Per setting, each model's forgetting (max) against its joint Dice (both averaged over
    T2 and FLAIR, then over seeds; bars: 95% normal intervals over seeds)."""
    from matplotlib.figure import Figure

    trials = trials.assign(setting=trials.apply(setting_label, axis=1))
    per_trial = trials.groupby(["model", "seed", "setting"], sort=False)
    means = per_trial[["forgetting_max", "final_dice"]].mean().reset_index()
    joint = means[means["setting"] == JOINT].set_index(["model", "seed"])["final_dice"]
    streams = means[means["setting"] != JOINT].join(joint.rename("joint"), on=["model", "seed"])
    settings = list(dict.fromkeys(streams["setting"]))
    fig = Figure(figsize=(4.6 * len(settings), 4.2), layout="constrained")
    axes = fig.subplots(1, len(settings), sharey=True, squeeze=False)[0]
    for ax, setting in zip(axes, settings, strict=True):
        rows = streams[streams["setting"] == setting]
        for i, (model, group) in enumerate(rows.groupby("model", sort=False)):
            n = len(group)
            half = 1.96 / np.sqrt(max(n, 1))
            x, y = group["joint"], group["forgetting_max"]
            ax.errorbar(
                x.mean(), y.mean(), xerr=half * x.std(ddof=1), yerr=half * y.std(ddof=1),
                fmt="o" if model not in STATIC else "s", color=f"C{i}", capsize=3, label=model,
            )  # fmt: skip
        ax.set(title=setting, xlabel="joint Dice (mean of T2, FLAIR)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("forgetting (max), mean of T2, FLAIR")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize="small")
    fig.suptitle("Forgetting vs what the model can learn (mean over seeds, 95% intervals)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def write_stage2(rows: pd.DataFrame, path: Path) -> None:
    """Write stage 2's choice (:func:`stage2_choice`) to ``path``, once: not when a frozen
    model has run (the choice was made before it), nor for a run without every candidate in
    every setting (one line on stderr)."""
    if rows["arm"].str.endswith(FROZEN_SUFFIX).any():
        return
    try:
        choice, averages = stage2_choice(rows)
    except ValueError as error:  # a run of another shape (a test's tiny scenario)
        print(f"analyse.py: no stage 2 design chosen: {error}", file=sys.stderr)
        return
    table = averages.rename("mean difference in forgetting (max)").map("{:+.4f}".format)
    path.write_text(
        f"Stage 2 design: **{choice}** (lowest forgetting (max) difference from {BASELINE}, "
        "averaged over the three settings, of the designs with routing parameters):\n\n"
        + to_markdown(table.reset_index())
    )


def gzip_copy(source: Path, target: Path) -> None:
    with source.open("rb") as src, gzip.GzipFile(target, "wb", mtime=0) as dst:
        shutil.copyfileobj(src, dst)


def main(run_dir: Path, study_dir: Path) -> None:
    tables = run_dir / "tables"
    for needed in (tables / COMPARISON, tables / "trials.csv"):
        if not needed.is_file():
            print(
                f"analyse.py: {needed} is missing (run `fedll report {run_dir} --compare "
                f"{BASELINE}` first; run.sh does)",
                file=sys.stderr,
            )
            sys.exit(2)
    comparison = pd.read_csv(tables / COMPARISON)
    trials = pd.read_csv(tables / "trials.csv")
    results_path = run_dir / "results.csv"
    results = pd.read_csv(results_path) if results_path.exists() else None
    rows = rule_rows(comparison)
    verdicts = verdict(rows)
    control = None if results is None else against_control(results)
    if control is not None:
        control.to_csv(study_dir / "comparison_norm_control.csv", index=False)
        control_verdicts = verdict(control)
        (study_dir / "stage3.md").write_text(
            f"Stage 3's Dy-CNN against {NORM_CONTROL} (the rule's rows):\n\n"
            + to_markdown(main_table(control, control_verdicts).astype(str))
        )
        verdicts = with_control(verdicts, control_verdicts)
    rows.to_csv(study_dir / "comparison.csv", index=False)
    verdicts.to_csv(study_dir / "verdict.csv", index=False)
    (study_dir / "verdict.md").write_text(to_markdown(main_table(rows, verdicts).astype(str)))
    write_stage2(rows, study_dir / "stage2.md")
    learning(trials).to_csv(study_dir / "learning.csv", index=False, float_format="%.4f")
    wanted = {s for seeds in SEED_GROUPS.values() for s in seeds}
    if results is not None and wanted <= set(results["seed"]):
        groups = by_seed_group(results, SEED_GROUPS)
        (study_dir / "seed_groups.md").write_text(to_markdown(groups.astype(str)))
    plot_forgetting_vs_joint(trials, study_dir / "plots" / "forgetting_vs_joint.png")
    for name in ("results.csv", "routing.csv"):
        if (run_dir / name).exists():
            gzip_copy(run_dir / name, study_dir / f"{name}.gz")
    for plot in sorted((run_dir / "plots").glob("routing_*.png")):
        shutil.copy(plot, study_dir / "plots" / plot.name)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: analyse.py RUN_DIR STUDY_DIR", file=sys.stderr)
        sys.exit(2)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
