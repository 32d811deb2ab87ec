"""``RUN_DIR/report.html``: one self-contained page of a run (figures inlined, no network).

A thin layer: :mod:`fedll.report.page` gathers the data, the Jinja2 template
(:data:`fedll.report.template.PAGE`, autoescaped) lays it out.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from fedll.atomic import atomic_path
from fedll.report import page, template
from fedll.report.definitions import page_definitions
from fedll.report.pairs import pair_rows
from fedll.report.tables import format_table
from fedll.run.provenance import read_provenance

logger = logging.getLogger(__name__)

TEMPLATE = "report.html.j2"


def environment() -> jinja2.Environment:
    """The template environment: fedll's templates, autoescaping on, undefined names fail."""
    return jinja2.Environment(
        loader=jinja2.DictLoader({TEMPLATE: template.PAGE}),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def page_context(
    run_dir: Path, table: pd.DataFrame, summary: pd.DataFrame, plots: list[Path],
    left_out: list[str] | None = None, results: pd.DataFrame | None = None,
    metric_tables: Mapping[str, pd.DataFrame] | None = None,
    pairs: pd.DataFrame | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Everything the template shows, from a run directory and its built report (with its
    ``results``, what the ε of differential privacy is, and each site's; ``metric_tables``:
    the forgetting table of each metric but Dice that it wrote; ``pairs``: the model pairs'
    comparison rows, :mod:`fedll.report.pairs`)."""
    run_dir = Path(run_dir)
    scenario = page.read_scenario(run_dir)
    view = format_table(table)
    trials = [str(t) for t in summary["trial"].drop_duplicates()]
    records = page.trial_records(run_dir, trials)
    return {
        "title": scenario.get("name") or run_dir.name,
        "run_dir": str(run_dir),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "brief": page.scenario_brief(scenario),
        "n_trials": len(trials),
        "key_table": page.table_rows(view, page.KEY_LABELS),
        "full_table": page.table_rows(view),
        "detection_table": page.detection_rows(
            {m: format_table(t, metric=m) for m, t in (metric_tables or {}).items()}
        ),
        "sections": page.figures(plots),
        "trials": records,
        "provenance": page.provenance_rows(read_provenance(run_dir), records),
        "left_out": list(left_out or []),
        "privacy": page.privacy_section(results),
        "pairs": pair_rows(pairs) if pairs is not None else None,
        "definitions": page_definitions(),
    }


def write_html(run_dir: Path, context: dict[str, Any]) -> Path:
    """Render the page into ``run_dir/report.html`` (atomically)."""
    path = Path(run_dir) / "report.html"
    text = environment().get_template(TEMPLATE).render(**context)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    logger.info("wrote %s", path)
    return path
