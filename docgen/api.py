"""The API reference: one page per module of the packages, rendered from the docstrings by
mkdocstrings, and the navigation that lists them, both derived from the source tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PACKAGES = ("fedll", "sites", "strategies")
PREFIX = "reference/api"


def _files(root: Path) -> list[tuple[str, ...]]:
    """Each module's path parts without ``.py``, a package as its folder's parts + ``("",)``
    (so a package sorts before its modules), in the order of :data:`PACKAGES`."""
    found = []
    for rank, package in enumerate(PACKAGES):
        for path in (root / package).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(root).with_suffix("").parts
            parts = (*parts[:-1], "") if parts[-1] == "__init__" else parts
            found.append((str(rank), *parts))
    return [parts[1:] for parts in sorted(found)]


def modules(root: Path) -> list[str]:
    """Every module of :data:`PACKAGES` by its dotted name, each package before its modules."""
    return [".".join(p for p in parts if p) for parts in _files(root)]


def page_uri(module: str) -> str:
    """The page of ``module`` (``reference/api/fedll.config.schema.md``)."""
    return f"{PREFIX}/{module}.md"


def page(module: str, is_package: bool) -> str:
    """The Markdown mkdocstrings expands: the module's docstring and members (a package's
    page holds its docstring only; its modules have their own pages)."""
    options = "\n    options:\n      members: false" if is_package else ""
    return f"# `{module}`\n\n::: {module}{options}\n"


def pages(root: Path) -> dict[str, str]:
    """Every API page's source URI and content."""
    out = {}
    for name in modules(root):
        is_package = (root / Path(*name.split(".")) / "__init__.py").exists()
        out[page_uri(name)] = page(name, is_package)
    return out


def nav(root: Path) -> list[Any]:
    """The API pages as MkDocs navigation: a section per package holding its own page, its
    modules' pages and its subpackages' sections."""
    sections: dict[tuple[str, ...], list[Any]] = {(): []}
    for parts in _files(root):
        name = ".".join(p for p in parts if p)
        if parts[-1] == "":  # a package: a new section in its parent's
            folder = parts[:-1]
            sections[folder] = [{name: page_uri(name)}]
            sections[folder[:-1]].append({name: sections[folder]})
        else:
            sections[parts[:-1]].append({name: page_uri(name)})
    return sections[()]
