"""The README: at most 200 lines, the commands CI runs (the test command and the docs build,
word for word in .ci/run), the placeholder for measured times, and relative links that reach
a file and, where they name one, a heading of it."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """A heading's anchor as Python-Markdown's toc (MkDocs) and GitHub make it for plain text."""
    text = re.sub(r"[`*]", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    found = set()
    for line in page.read_text().splitlines():
        if match := re.match(r"#+ (.*?)(?: \{#([\w-]+)\})?$", line):
            found.add(match.group(2) or slug(match.group(1)))
    return found


def test_the_readme_is_short_and_runs_what_ci_runs():
    text = README.read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert len(text.splitlines()) <= 200
    assert "```bash\n.venv/bin/python -m pytest\n```" in text
    assert "\n.venv/bin/python -m pytest\n" in ci
    assert '`.venv/bin/python -m pytest -m "not slow"` is the quick subset' in text
    assert ".venv/bin/mkdocs build --strict" in text
    assert "\n.venv/bin/mkdocs build --strict\n" in ci
    assert "<!-- times: filled by lead -->" in text


def test_the_readme_links_reach_their_files_and_headings():
    broken = []
    for target in LINK.findall(README.read_text()):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        file = ROOT / path
        if not file.exists() or (anchor and anchor not in anchors(file)):
            broken.append(target)
    assert broken == []
    assert (ROOT / "docs" / "img" / "montage.png").stat().st_size < 200_000  # a small figure


def test_slugs_as_the_site_makes_them():
    assert slug("The reproducibility rule") == "the-reproducibility-rule"
    assert slug("BWT, and why it is n/a for the last-trained modality") == (
        "bwt-and-why-it-is-na-for-the-last-trained-modality"
    )
    assert slug("Segment new scans with `fedll segment`") == "segment-new-scans-with-fedll-segment"
