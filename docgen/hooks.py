"""MkDocs hooks (``hooks:`` in mkdocs.yml): the generated pages and the generated parts of
hand-written pages, computed from the code at every build.

- a page holding ``<!-- fedll-docs: NAME -->`` gets the generated Markdown of NAME there
  (:data:`GENERATED`: the scenario reference, the CLI reference, the package layout);
- the API pages (:mod:`docgen.api`) are added as files, and their navigation replaces the
  ``reference/api/index.md`` entry's section in ``nav``;
- the studies' write-ups (``studies/*/*.md``) become pages under ``studies/``, with the
  files they link to; a link to a folder gets a generated page listing its images; a page of
  ``docs/`` links to them as the repository has them (``../../studies/...``, which GitHub
  follows), and the link is made the site's;
- Sphinx roles in rendered docstrings (``:class:`X```) are shown as plain code.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the repository's fedll and docgen, not an installed copy
    sys.path.insert(0, str(ROOT))

from mkdocs.structure.files import File, Files  # noqa: E402

from docgen import api, cli, layout, scenario  # noqa: E402

GENERATED: dict[str, Callable[[], str]] = {
    "scenario-reference": scenario.markdown,
    "cli-reference": cli.markdown,
    "layout": lambda: layout.markdown(ROOT),
}
"""The generated parts by marker name."""
MARKER = re.compile(r"^<!-- fedll-docs: ([a-z-]+) -->$", re.M)
LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?\)")
STUDY_SKIP = ("run",)  # a study's raw run folder: thousands of files no page links to
API_INDEX = f"{api.PREFIX}/index.md"


def on_config(config: Any) -> Any:
    """Put the API pages into the navigation, after the API overview page."""

    def expand(items: list[Any]) -> bool:
        for item in items:
            if not isinstance(item, dict):
                continue
            for title, value in item.items():
                if value == API_INDEX:
                    item[title] = [{"Overview": API_INDEX}, *api.nav(ROOT)]
                    return True
                if isinstance(value, list) and expand(value):
                    return True
        return False

    if not expand(config["nav"] or []):
        raise ValueError(f"mkdocs.yml: nav has no entry for {API_INDEX}")
    return config


def _study_files(config: Any) -> list[File]:
    """The studies' Markdown pages and every file they link to (relative links only)."""
    out: dict[str, File] = {}
    studies = ROOT / "studies"
    for page in sorted(studies.glob("*/*.md")):
        uri = page.relative_to(ROOT).as_posix()
        out[uri] = File.generated(config, uri, abs_src_path=str(page))
        for _, target, _ in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            path = (page.parent / target).resolve()
            if not path.is_relative_to(studies) or set(STUDY_SKIP) & set(path.parts):
                continue
            if path.is_dir():
                index = path / "index.md"
                out[index.relative_to(ROOT).as_posix()] = File.generated(
                    config, index.relative_to(ROOT).as_posix(), content=_folder_page(path)
                )
                images = sorted(path.glob("*.png"))
            else:
                images = [path] if path.is_file() else []
            for image in images:
                rel = image.relative_to(ROOT).as_posix()
                out.setdefault(rel, File.generated(config, rel, abs_src_path=str(image)))
    return list(out.values())


def _folder_page(folder: Path) -> str:
    """A page showing every image of a study's folder (what a link to the folder shows)."""
    lines = [f"# `{folder.relative_to(ROOT).as_posix()}/`", ""]
    for image in sorted(folder.glob("*.png")):
        lines += [f"## `{image.name}`", "", f"![{image.stem}]({image.name})", ""]
    return "\n".join(lines)


def on_files(files: Files, config: Any) -> Files:
    """Add the API pages and the studies' pages and files."""
    for uri, content in api.pages(ROOT).items():
        files.append(File.generated(config, uri, content=content))
    for file in _study_files(config):
        files.append(file)
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace every generated-part marker by its Markdown; in a study's page, a link to a
    folder goes to that folder's generated page."""

    def generate(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATED:
            raise ValueError(f"{page.file.src_uri}: unknown generated part {name!r}")
        return GENERATED[name]()

    markdown = MARKER.sub(generate, markdown)
    if not page.file.src_uri.startswith("studies/") and not page.file.generated_by:
        markdown = LINK.sub(partial(_to_site, ROOT / "docs" / page.file.src_uri), markdown)
    if page.file.src_uri.startswith("studies/"):
        source = ROOT / page.file.src_uri

        def to_index(match: re.Match[str]) -> str:
            start, target, anchor = match.groups()
            if "://" not in target and (source.parent / target).is_dir():
                target = f"{target.rstrip('/')}/index.md"
            return f"{start}{target}{anchor or ''})"

        markdown = LINK.sub(to_index, markdown)
    return markdown


def _to_site(source: Path, match: re.Match[str]) -> str:
    """A link from a page of docs/ to a study's file as the repository has it
    (``../../studies/x/README.md``, which GitHub follows) made the link to that file's page in
    the site (``../studies/x/README.md``)."""
    start, target, anchor = match.groups()
    if "://" not in target:
        path = (source.parent / target).resolve()
        if path.is_relative_to(ROOT / "studies") and path.exists():
            site = ROOT / "docs" / path.relative_to(ROOT)
            target = os.path.relpath(site, source.parent)
    return f"{start}{target}{anchor or ''})"


ROLE = re.compile(r":(?:mod|func|class|data|meth|attr|exc|obj):(<code>)~?")


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """``:class:`~a.B``` in a rendered docstring shows as ``a.B`` in code."""
    return ROLE.sub(r"\1", html)
