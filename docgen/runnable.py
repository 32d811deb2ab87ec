"""The shell blocks the docs mark runnable: a fenced ``bash`` block right after the line
``<!-- runnable -->`` (the marker renders as nothing). ``tests/docs/test_runnable.py`` runs a
page's blocks in order, in one fresh folder, and fails on the first that exits non-zero."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MARKER = "<!-- runnable -->"
FENCES = ("```bash", "```sh")


@dataclass(frozen=True)
class Block:
    """One runnable block: the page, the line of its opening fence (1-based) and its code."""

    page: Path
    line: int
    code: str


def blocks(page: Path) -> list[Block]:
    """The runnable blocks of one Markdown page, in order. A marker that is not followed by a
    ``bash`` fence, or a fence that is never closed, is a ValueError naming the line."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != MARKER:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j == len(lines) or lines[j].strip() not in FENCES:
            raise ValueError(f"{page}:{i + 1}: {MARKER} must be followed by a ```bash block")
        end = j + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{page}:{j + 1}: the runnable block is never closed")
        found.append(Block(page, j + 1, "\n".join(lines[j + 1 : end]) + "\n"))
        i = end + 1
    return found


def pages(root: Path) -> list[Path]:
    """The README and every page under ``docs/`` that holds a runnable block."""
    candidates = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return [page for page in candidates if blocks(page)]
