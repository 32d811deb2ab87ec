"""The forgetting table as files: CSV (numeric), Markdown and LaTeX (mean ± std)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedll.atomic import atomic_path
from fedll.columns import config_columns
from fedll.data import LABELS
from fedll.report.read import COUNTS
from fedll.report.summary import MEASURES

logger = logging.getLogger(__name__)


def format_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The readable view: one "mean ± std" string per measure; "n/a" where no seed has a value,
    and "(n=k)" where only k of the configuration's seeds have one; then the ``COUNTS`` (summed
    over seeds) where the table has them."""

    def cell(mean: float, std: float, n: int, seeds: int) -> str:
        if np.isnan(mean):
            return "n/a"
        text = f"{mean:.{digits}f}" + ("" if np.isnan(std) else f" ± {std:.{digits}f}")
        return text + (f" (n={n})" if n < seeds else "")

    keys = [*config_columns(table), "modality"]
    view = table[keys].copy()
    view["modality"] = view["modality"].map(lambda m: LABELS.get(m, m))
    view["seeds"] = table["n_seeds"]
    for measure, label in MEASURES.items():
        columns = [table[f"{measure}_{s}"] for s in ("mean", "std", "n")] + [table["n_seeds"]]
        view[label] = [cell(*values) for values in zip(*columns, strict=True)]
    for name in COUNTS.values():
        if name in table.columns:
            view[name.replace("_", " ")] = table[name].astype(int)
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


def write_tables(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write forgetting.csv (numeric), forgetting.md and forgetting.tex (mean ± std)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    view = format_table(table)
    texts = {
        "forgetting.csv": table.to_csv(index=False),
        "forgetting.md": to_markdown(view),
        "forgetting.tex": to_latex(view),
    }
    paths = []
    for name, text in texts.items():
        path = out_dir / name
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        paths.append(path)
    logger.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths
