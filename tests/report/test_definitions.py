"""Every measure on the page is one click from its definition, written into the page, and a
cell that is n/a says why."""

from __future__ import annotations

import re
from pathlib import Path

from test_report import make_results  # the hand-built run of test_report

from fedll.report import build_report
from fedll.report.definitions import DEFINITIONS, page_definitions
from fedll.report.page import DETECTION_LABELS, KEY_LABELS
from fedll.report.summary import MEASURES


def test_every_measure_label_of_the_page_has_a_definition():
    labels = {*MEASURES.values(), *KEY_LABELS}
    labels |= {label for columns in DETECTION_LABELS.values() for label in columns.values()}
    assert sorted(labels - set(DEFINITIONS)) == []
    anchors = [d["anchor"] for d in page_definitions()]
    assert len(anchors) == len(set(anchors))  # one entry per anchor
    assert {d.anchor for d in DEFINITIONS.values()} <= set(anchors)


def test_the_page_links_each_measure_to_its_definition_and_explains_na(tmp_path: Path):
    make_results().assign(hd95=4.0, surface_dice=0.5, surface_tolerance_mm=2.0).to_csv(
        tmp_path / "results.csv", index=False
    )
    build_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    linked = set(re.findall(r'<th><a href="#(def-[a-z0-9-]+)"', page))
    defined = set(re.findall(r'<dt id="(def-[a-z0-9-]+)"', page))
    assert {"def-final", "def-forgetting-max", "def-bwt", "def-hd95"} <= linked
    assert linked <= defined  # no link points nowhere
    # BWT of FLAIR, trained in the last round, is n/a: the cell says why
    assert '<td class="na" title="n/a: the modality trained in the last round' in page
    assert "DESIGN.md" not in page
