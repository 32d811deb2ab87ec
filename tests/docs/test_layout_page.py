"""The package layout and the API pages (docgen.layout, docgen.api): generated from the tree,
every module is listed with its docstring's first paragraph and has an API page in the
navigation; a module without a docstring fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from docgen import api, layout

ROOT = Path(__file__).resolve().parents[2]


def python_files() -> list[str]:
    return sorted(
        p.relative_to(ROOT).as_posix()
        for package in layout.PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if "__pycache__" not in p.parts
    )


def test_every_module_is_listed_with_its_docstring():
    listed = {e.path: e.summary for files in layout.entries(ROOT).values() for e in files}
    assert sorted(listed) == python_files()
    assert [path for path, text in listed.items() if text == layout.NO_DOCSTRING] == []
    text = layout.markdown(ROOT)
    for path in listed:
        assert f"| `{path}` |" in text
    assert listed["fedll/federation/stream.py"] == (
        "Arrival streams: which site's patients arrive in which federated round."
    )


def test_every_module_is_listed_exactly_once_and_nothing_else():
    """The page's file rows (before the scenarios) are the tree's Python files, each once."""
    text = layout.markdown(ROOT).split("### `scenarios/`")[0]
    rows = re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE)
    assert sorted(rows) == python_files()
    assert len(rows) == len(set(rows))


@pytest.mark.parametrize("page", ["architecture.md", "contributing.md"])
def test_the_paths_the_prose_names_exist(page: str):
    """A module moved or renamed is renamed in the architecture and contributing pages too."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    paths = re.findall(r"`((?:fedll|sites|strategies|tests|docgen|benchmarks)/[\w./]*)`", text)
    assert paths
    assert [path for path in paths if not (ROOT / path).exists()] == []


def test_every_scenario_is_listed():
    text = layout.markdown(ROOT)
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        assert f"| `scenarios/{path.name}` |" in text
    assert "(no comment)" not in text


def test_a_module_added_to_the_tree_is_listed(tmp_path: Path):
    (tmp_path / "fedll" / "newpkg").mkdir(parents=True)
    (tmp_path / "fedll" / "__init__.py").write_text('"""The package."""\n')
    (tmp_path / "fedll" / "newpkg" / "__init__.py").write_text('"""A new package.\n\nMore."""\n')
    (tmp_path / "fedll" / "newpkg" / "thing.py").write_text("x = 1\n")
    (tmp_path / "scenarios").mkdir()
    text = layout.markdown(tmp_path)
    assert "| `fedll/newpkg/__init__.py` | A new package. |" in text
    assert f"| `fedll/newpkg/thing.py` | {layout.NO_DOCSTRING} |" in text
    assert api.modules(tmp_path) == ["fedll", "fedll.newpkg", "fedll.newpkg.thing"]


def flatten(nav: list) -> list[str]:
    out = []
    for item in nav:
        for value in item.values():
            out.extend(flatten(value) if isinstance(value, list) else [value])
    return out


def test_every_module_has_an_api_page_in_the_navigation():
    modules = [
        p.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for p in python_files()
        if p.split("/")[0] in api.PACKAGES
    ]
    pages = api.pages(ROOT)
    assert sorted(pages) == sorted(api.page_uri(m) for m in modules)
    assert sorted(flatten(api.nav(ROOT))) == sorted(pages)
    assert pages[api.page_uri("fedll.evaluation.metrics.lifelong")] == (
        "# `fedll.evaluation.metrics.lifelong`\n\n::: fedll.evaluation.metrics.lifelong\n"
    )
    assert "members: false" in pages[api.page_uri("fedll.evaluation.metrics")]


def test_the_architecture_page_holds_the_generated_part():
    assert "<!-- fedll-docs: layout -->" in (ROOT / "docs" / "architecture.md").read_text()
