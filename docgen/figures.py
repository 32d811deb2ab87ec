"""The README's figure, drawn from committed results: ``python -m docgen.figures``.

It is fedll's own montage (:func:`fedll.report.montage.plot_montage`) of one trial of
``studies/routing-paired`` (the static U-Net at equal parameter count, 15-patient arrivals,
seed 0), read from that study's sealed trial files: each row a round, truth green and
prediction red on two T2 and two FLAIR test cases, beside the Dice curves. Drawn at a lower
resolution than a report's (90 instead of 120 dpi) so that the committed file stays small.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TRIAL = "static-equal-params__alternating-rounds__b15__fedavg__finetune__s0"
OUT = ROOT / "docs" / "img" / "montage.png"
DPI = 90

logger = logging.getLogger(__name__)


def draw(out: Path = OUT, trial: str = TRIAL) -> Path:
    """Draw ``trial``'s montage from the study's trial files into ``out``."""
    from fedll.report import montage
    from fedll.report.read import check_results
    from fedll.results.rows import sealed_previews

    trials = ROOT / "studies" / "routing-paired" / "run" / "trials"
    rows = check_results(pd.read_csv(trials / f"{trial}.csv"))
    previews = sealed_previews(trials / f"{trial}.json", trials / f"{trial}.previews.npz")
    title = "static U-Net (equal parameters), 15-patient arrivals, seed 0"

    def save(fig: Any, path: Path) -> Path:
        fig.savefig(path, format="png", dpi=DPI)
        return path

    out.parent.mkdir(parents=True, exist_ok=True)
    report_save, montage._save = montage._save, save  # the report's drawing, at this dpi
    try:
        return montage.plot_montage(rows, previews, title, out)
    finally:
        montage._save = report_save


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    logger.info("wrote %s", draw())
