"""The package layout, generated from the modules' docstrings.

Every Python file of the packages (``fedll/``, ``sites/``, ``strategies/``) and of
``benchmarks/`` is listed with the first paragraph of its module docstring (read with
:mod:`ast`, nothing is imported), and every shipped scenario with its header comment. A module
added, moved or removed changes the page at the next build; a module without a docstring is
listed as such (and ``tests/docs/test_layout_page.py`` fails on it).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from docgen.scenario import rst_to_markdown

PACKAGES = ("fedll", "sites", "strategies", "benchmarks")
"""The folders listed, in this order (the layering rules are in tests/test_layering.py)."""
NO_DOCSTRING = "(no module docstring)"


@dataclass(frozen=True)
class Entry:
    """One file: its path from the repository root and what its docstring says it holds."""

    path: str
    summary: str


def summary(path: Path) -> str:
    """The first paragraph of a module's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    if not doc:
        return NO_DOCSTRING
    first = doc.strip().split("\n\n")[0]
    return " ".join(rst_to_markdown(first).split())


def entries(root: Path) -> dict[str, list[Entry]]:
    """Per folder (``fedll``, ``fedll/config``, ...), its Python files, ``__init__`` first."""
    out: dict[str, list[Entry]] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            folder = path.parent.relative_to(root).as_posix()
            entry = Entry(path.relative_to(root).as_posix(), summary(path))
            files = out.setdefault(folder, [])
            files.insert(0, entry) if path.name == "__init__.py" else files.append(entry)
    return out


def scenarios(root: Path) -> list[Entry]:
    """The shipped scenario files with the comment lines at their top."""
    out = []
    for path in sorted((root / "scenarios").glob("*.yaml")):
        comment = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            comment.append(line.lstrip("#").strip())
        out.append(Entry(path.relative_to(root).as_posix(), " ".join(comment) or "(no comment)"))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(root: Path) -> str:
    """The generated part of the architecture page."""
    lines: list[str] = []
    for folder, files in entries(root).items():
        anchor = "layout-" + folder.replace("/", "-")
        lines += [f"### `{folder}/` {{#{anchor}}}", "", "| file | what it holds |", "|---|---|"]
        lines += [f"| `{e.path}` | {_cell(e.summary)} |" for e in files]
        lines.append("")
    lines += ["### `scenarios/` {#scenarios}", "", "| file | what it runs |", "|---|---|"]
    lines += [f"| `{e.path}` | {_cell(e.summary)} |" for e in scenarios(root)]
    lines.append("")
    return "\n".join(lines)
