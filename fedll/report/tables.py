"""The forgetting tables as files: CSV (numeric), Markdown and LaTeX (mean [95 % interval] over
seeds), one per metric (``forgetting.*`` for Dice, ``forgetting_hd95.*``,
``forgetting_detection_rate.*``, ``forgetting_hd95_brats.*``, ``forgetting_surface_dice.*``);
``privacy.*``, each site's ε, where a trial has one."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedll.atomic import atomic_path
from fedll.data import LABELS
from fedll.report.epsilon import epsilon_clause, format_privacy, privacy_caption, privacy_table
from fedll.report.read import COUNTS
from fedll.report.summary import METRICS, PRIVACY, seed_interval, table_measures
from fedll.results.columns import config_columns

logger = logging.getLogger(__name__)


def format_table(table: pd.DataFrame, digits: int = 3, metric: str = "dice") -> pd.DataFrame:
    """The readable view: one "mean [low, high]" string per measure, the mean over seeds and
    its 95 % interval (:func:`fedll.report.summary.seed_interval`; the mean alone where one
    seed has a value); "n/a" where no seed has one, and "(n=k)" where only k of the
    configuration's seeds have one; then the ``COUNTS`` (summed over seeds) where the table
    has them."""

    def cell(mean: float, std: float, n: int, seeds: int) -> str:
        if np.isnan(mean):
            return "n/a"
        low, high = seed_interval(mean, std, n)
        text = f"{mean:.{digits}f}"
        if not np.isnan(low):
            text += f" [{low:.{digits}f}, {high:.{digits}f}]"
        return text + (f" (n={n})" if n < seeds else "")

    keys = [*config_columns(table), "modality"]
    view = table[keys].copy()
    view["modality"] = view["modality"].map(lambda m: LABELS.get(m, m))
    view["seeds"] = table["n_seeds"]
    for measure, label in table_measures(table, metric).items():
        columns = [table[f"{measure}_{s}"] for s in ("mean", "std", "n")] + [table["n_seeds"]]
        view[label] = [cell(*values) for values in zip(*columns, strict=True)]
    for name in COUNTS.values():
        if name in table.columns:
            view[name.replace("_", " ")] = table[name].astype(int)
    if PRIVACY in table.columns:
        view["final ε"] = ["n/a" if np.isnan(e) else f"{e:.{digits}g}" for e in table[PRIVACY]]
    return view.astype(str)


def to_markdown(view: pd.DataFrame) -> str:
    """A GitHub-style pipe table of a string DataFrame."""

    def row(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [row(view.columns), "|" + "|".join("---" for _ in view.columns) + "|"]
    lines += [row(r) for r in view.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(view: pd.DataFrame) -> str:
    """A booktabs ``tabular`` of a string DataFrame (needs ``\\usepackage{booktabs}``)."""

    def escape(text: Any) -> str:
        text = re.sub(r"([&%$#_{}])", r"\\\1", str(text).replace("\\", "\0"))
        text = text.replace("\0", r"\textbackslash{}").replace("~", r"\textasciitilde{}")
        return text.replace("^", r"\textasciicircum{}").replace("±", r"$\pm$")

    def row(cells: Sequence[Any]) -> str:
        return " & ".join(escape(c) for c in cells) + r" \\"

    return "\n".join(
        [
            r"\begin{tabular}{" + "l" * len(view.columns) + "}",
            r"\toprule",
            row(view.columns),
            r"\midrule",
            *(row(r) for r in view.itertuples(index=False)),
            r"\bottomrule",
            r"\end{tabular}",
            "",
        ]
    )


def caption(metric: str, results: pd.DataFrame | None = None) -> str:
    """One line saying what the table of ``metric`` measures, how the test cases were scored
    (the results' ``evaluated_slices`` and ``surface_tolerance_mm``) and, where a trial has
    one, what its ε is (:func:`fedll.report.epsilon.epsilon_clause`)."""
    label, higher = METRICS[metric]
    text = {
        "hd95": (
            "HD95 (mm) per test case with a non-empty prediction, in 3-D, mean over each "
            "modality's detected test cases (n/a: none detected; the share detected is in "
            "forgetting_detection_rate.*, BraTS's HD95 counting a missed case at 373.13 mm in "
            "forgetting_hd95_brats.*)"
        ),
        "hd95_brats": (
            "BraTS HD95 (mm) per test case, 373.13 mm where the prediction is empty, in 3-D, "
            "mean over each modality's test cases"
        ),
        "detection_rate": (
            "Detection rate: the share of each modality's test cases (each has tumour) with a "
            "non-empty prediction"
        ),
    }.get(metric, f"{label} per test case, in 3-D, mean over each modality's test cases")
    if not higher:
        text += "; forgetting and switch drops are rises in mm, BWT < 0 = worse"
    if results is not None:
        evaluated = sorted(set(results.get("evaluated_slices", pd.Series(dtype=str))) - {""})
        if evaluated:
            text += "; test slices: " + ", ".join(
                "all brain slices" if e == "all" else "the training selection" for e in evaluated
            )
        if metric == "surface_dice":
            tolerances = sorted(set(results["surface_tolerance_mm"].dropna()))
            if tolerances:
                text += "; tolerance " + ", ".join(f"{t:g} mm" for t in tolerances)
        text += epsilon_clause(results)
    return text + "; mean over seeds [95 % t interval over seeds]."


def write_tables(
    table: pd.DataFrame, out_dir: Path, metric: str = "dice", title: str | None = None
) -> list[Path]:
    """Write forgetting[_<metric>].csv (numeric), .md and .tex (mean [95 % interval]); the
    Markdown starts with ``title`` (e.g. :func:`caption`) where given."""
    view = format_table(table, metric=metric)
    stem = "forgetting" if metric == "dice" else f"forgetting_{metric}"
    return _write(out_dir, stem, table, view, title)


def write_privacy(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write privacy.csv (numeric), .md (titled by its caption) and .tex: each site's ε
    (:func:`fedll.report.epsilon.privacy_table`); nothing where no trial has an accountant."""
    table = privacy_table(results)
    if table.empty:
        return []
    return _write(out_dir, "privacy", table, format_privacy(table), privacy_caption(results))


def _write(
    out_dir: Path, stem: str, table: pd.DataFrame, view: pd.DataFrame, title: str | None
) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(view)
    texts = {
        f"{stem}.csv": table.to_csv(index=False),
        f"{stem}.md": f"{title}\n\n{markdown}" if title else markdown,
        f"{stem}.tex": to_latex(view),
    }
    paths = []
    for name, text in texts.items():
        path = out_dir / name
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        paths.append(path)
    logger.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths
