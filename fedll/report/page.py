"""What ``report.html`` shows, gathered from a run directory as plain data (no HTML here).

Each function returns lists and dicts of strings and numbers that the page's template
(:mod:`fedll.report.html`) lays out: the scenario in brief, the forgetting table (key
measures, then every measure), what its ε is and each site's (where a trial has one), the
figures as ``data:`` URIs, each trial's failed and rejected updates and wall time (from its
seal), and the run's provenance.
"""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fedll.report.definitions import definition_of
from fedll.report.epsilon import epsilon_clause, format_privacy, privacy_caption, privacy_table
from fedll.report.summary import MEASURES
from fedll.results.columns import config_columns

KEY_LABELS: tuple[str, ...] = tuple(
    MEASURES[m] for m in ("final_dice", "forgetting_max", "bwt", "learning_accuracy")
)
"""The measures the page's first table shows (every other one is a click away)."""
DETECTION_LABELS: dict[str, dict[str, str]] = {  # metric -> its table's label -> the page's
    "hd95": {"final HD95 (mm)": "final HD95 (mm)", "forgetting (max)": "HD95 rise (max, mm)"},
    "detection_rate": {
        "final detection rate": "final detection rate",
        "AUC": "detection rate (mean over rounds)",
        "forgetting (max)": "detection rate forgetting (max)",
    },
    "surface_dice": {
        "final surface Dice": "final surface Dice",
        "forgetting (max)": "surface Dice forgetting (max)",
    },
}
"""The columns of the page's HD95, detection and surface Dice table, from the formatted
forgetting tables of ``hd95`` (over the detected cases), ``detection_rate`` and
``surface_dice``."""
FIGURE_KINDS: dict[str, str] = {  # file-name prefix -> section of the page
    "curves_": "Dice curves",
    "montage_": "Pictures of forgetting",
    "dice_matrix_": "Dice matrices",
    "attention_": "Attention of the Dy-CNNs",
    "routing_": "Per-slice routing of the Dy-CNNs",
}


def scenario_brief(scenario: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, text) pairs from a resolved scenario (``RUN_DIR/scenario.yaml`` as a mapping):
    sites, stream, models, strategies, continual-learning methods, seeds."""
    brief = []
    sites = scenario.get("sites") or []
    if sites:
        brief.append(
            (
                "sites",
                "; ".join(
                    f"{s.get('name')} ({s.get('modality')}, {s.get('patients')} patients)"
                    for s in sites
                ),
            )
        )
    stream = scenario.get("stream") or {}
    if stream:
        brief.append(("stream", ", ".join(f"{k}: {_text(v)}" for k, v in stream.items())))
    models = scenario.get("models") or {}
    if models:
        brief.append(
            (
                "models",
                "; ".join(
                    f"{key}: " + ", ".join(f"{a}={_text(v)}" for a, v in args.items())
                    for key, args in models.items()
                ),
            )
        )
    for key in ("strategies", "cl", "seeds"):
        if key in scenario:
            brief.append((key, _text(scenario[key])))
    if scenario.get("joint"):
        brief.append(("joint", "yes (the pooled upper bound per model and seed)"))
    return brief


def read_scenario(run_dir: Path) -> dict[str, Any]:
    """``RUN_DIR/scenario.yaml`` as a mapping ({} where there is none)."""
    path = Path(run_dir) / "scenario.yaml"
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text())
    return loaded if isinstance(loaded, dict) else {}


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, dict):
        if set(value) == {"name"}:
            return str(value["name"])
        return "{" + ", ".join(f"{k}: {_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def table_rows(view: pd.DataFrame, labels: Iterable[str] | None = None) -> dict[str, Any]:
    """``{"columns": [...], "rows": [[...], ...], "constant": [(column, value), ...]}`` of a
    formatted forgetting table (:func:`fedll.report.format_table`), keeping its
    configuration columns, modality and seeds and then only ``labels`` (every column where
    None). A configuration column or ``seeds`` that holds one value in every row of a table of
    two or more rows is left out of the columns and listed in ``constant``, shown once
    above the table."""
    if labels is not None:
        keys = [*config_columns(view), "modality", "seeds"]
        view = view[[*keys, *(c for c in labels if c in view.columns)]]
    text = view.astype(str)
    constant = []
    if len(text) > 1:
        candidates = [c for c in (*config_columns(view), "seeds") if c in text.columns]
        constant = [(c, str(text[c].iloc[0])) for c in candidates if text[c].nunique() == 1]
        text = text.drop(columns=[c for c, _ in constant])
    return {
        "columns": list(text.columns),
        "rows": text.to_numpy().tolist(),
        "constant": constant,
        **measure_links(list(text.columns)),
    }


def measure_links(columns: Iterable[str]) -> dict[str, dict[str, str]]:
    """``{"links": column -> its definition's anchor, "na": column -> why it can be n/a}``
    for the columns that are measures (:mod:`fedll.report.definitions`)."""
    links, na = {}, {}
    for column in columns:
        if (found := definition_of(column)) is not None:
            links[column] = found.anchor
            if found.na:
                na[column] = found.na
    return {"links": links, "na": na}


def privacy_section(results: pd.DataFrame | None) -> dict[str, Any] | None:
    """``{"clause", "caption", "table"}`` where some trial has an ε: what the forgetting
    table's ``final ε`` is, the per-site table's caption and its rows
    (:mod:`fedll.report.epsilon`); None otherwise."""
    if results is None or not (table := privacy_table(results)).size:
        return None
    clause = epsilon_clause(results).removeprefix("; ")
    return {
        "clause": clause[:1].upper() + clause[1:],
        "caption": privacy_caption(results),
        "table": table_rows(format_privacy(table)),
    }


def detection_rows(views: Mapping[str, pd.DataFrame]) -> dict[str, Any] | None:
    """:func:`table_rows` of HD95 beside the detection rate: the configuration columns,
    modality and seeds, then the :data:`DETECTION_LABELS` of each formatted forgetting table
    in ``views`` (metric -> :func:`fedll.report.format_table` of it); None without them."""
    shown = [m for m in DETECTION_LABELS if m in views]
    if not shown:
        return None
    # the tables of one run's metrics have the same rows, in the same order
    first = views[shown[0]]
    columns = [first[[*config_columns(first), "modality", "seeds"]]]
    for metric in shown:
        labels = DETECTION_LABELS[metric]
        columns.append(views[metric][list(labels)].set_axis(list(labels.values()), axis=1))
    return table_rows(pd.concat(columns, axis=1))


def figures(plots: Iterable[Path]) -> list[dict[str, Any]]:
    """The plots grouped into the page's sections (:data:`FIGURE_KINDS`, in that order), each
    figure ``{"title", "src"}`` with the PNG inlined as a ``data:image/png;base64`` URI."""
    sections: dict[str, list[dict[str, str]]] = {title: [] for title in FIGURE_KINDS.values()}
    for path in sorted(Path(p) for p in plots):
        for prefix, section in FIGURE_KINDS.items():
            if path.name.startswith(prefix) and path.suffix == ".png":
                title = path.stem[len(prefix) :].replace("_", " ") or path.stem
                sections[section].append({"title": title, "src": data_uri(path)})
                break
    return [{"title": t, "figures": f} for t, f in sections.items() if f]


PAGE_COLOURS = 256
"""The palette of a figure inlined in the page: the plots' files keep every colour, the page
carries a 256-colour copy (a third of the size: the quickstart's page 4.7 -> 1.9 MB)."""


def data_uri(path: Path, colours: int = PAGE_COLOURS) -> str:
    """A PNG file as a ``data:`` URI, reduced to a palette of ``colours`` (fast octree
    quantisation, deterministic; a figure of fewer colours keeps them all)."""
    from PIL import Image

    with Image.open(path) as image:
        reduced = image.convert("RGB").quantize(colours, method=Image.Quantize.FASTOCTREE)
    buffer = io.BytesIO()
    reduced.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def trial_records(run_dir: Path, trial_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Per trial, from its seal in ``RUN_DIR/trials``: ``{"trial", "wall_s", "arithmetic",
    "failed", "rejected"}`` with the events as "site (rounds 1, 3)" texts; a trial without a
    readable seal (results copied without their trial files) has None for each."""
    records = []
    for trial_id in trial_ids:
        seal_path = Path(run_dir) / "trials" / f"{trial_id}.json"
        try:
            seal = json.loads(seal_path.read_text())
            events = seal["events"]
        except (OSError, ValueError, KeyError, TypeError):
            records.append(
                {"trial": trial_id, "wall_s": None, "arithmetic": None, "failed": None,
                 "rejected": None}
            )  # fmt: skip
            continue
        record: dict[str, Any] = {
            "trial": trial_id,
            "wall_s": seal.get("wall_s"),
            "arithmetic": seal.get("arithmetic"),
        }
        for kind in ("failed", "rejected"):
            record[kind] = [
                f"{site} (round{'s' if len(rounds) > 1 else ''} {', '.join(map(str, rounds))})"
                for site, rounds in events.get(kind, {}).items()
            ]
        records.append(record)
    return records


def arithmetic_text(records: Iterable[Mapping[str, Any]]) -> str:
    """How many trials ran on each arithmetic (from :func:`trial_records`), most first:
    trials on different arithmetic agree in distribution, not bit for bit."""
    counts = Counter(r.get("arithmetic") or "not recorded" for r in records)
    text = "; ".join(f"{name}: {n} trial{'s' if n > 1 else ''}" for name, n in counts.most_common())
    if len(counts) > 1:
        text += " (trials of different arithmetic agree in distribution, not bit for bit)"
    return text


def provenance_rows(
    provenance: Mapping[str, Any] | None, records: Iterable[Mapping[str, Any]] = ()
) -> list[tuple[str, str]]:
    """(label, text) pairs of a run's provenance.json ([] where there is none), with the
    trials' arithmetic (:func:`arithmetic_text`) when ``records`` are given."""
    if not provenance:
        return []
    rows = [
        ("fedll", str(provenance.get("fedll"))),
        ("git revision", str(provenance.get("git_revision") or "not a git checkout")),
        ("Python", str(provenance.get("python"))),
    ]
    for name, version in (provenance.get("packages") or {}).items():
        rows.append((name, str(version or "not installed")))
    rows.append(("platform", str(provenance.get("platform"))))
    rows.append(("CPUs", str(provenance.get("cpus"))))
    if provenance.get("arithmetic"):
        rows.append(("arithmetic (cohort)", str(provenance["arithmetic"])))
    records = list(records)
    if records:
        rows.append(("arithmetic (trials)", arithmetic_text(records)))
    return rows
