"""The package layering: fedll's core never imports the Flower apps (sites/, strategies/) and
reaches them by reference ("module:attribute" strings, which load a module at run time as an
import does) in one declared place, no module takes part in an import circle (references
counted), and the report and results stay free of torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedll", "sites", "strategies")
REFERENCE = re.compile(r"^((?:fedll|sites|strategies)(?:\.\w+)*):\w+$")
APP_SEAM = {"fedll.run.execute": {"sites.client_app", "strategies.server_app"}}
"""The references fedll's core holds into the apps: a trial runs fedll's Flower app."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def imports(path: Path, known: set[str], runtime_only: bool) -> set[str]:
    """The project modules ``path`` imports (``from pkg import name`` counts as ``pkg.name``
    where that is a module); with ``runtime_only``, not those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(n) for n in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def references(path: Path) -> set[str]:
    """The project modules ``path`` names in a "module:attribute" string (a reference that
    :func:`fedll.federation.inprocess.load_reference` or Flower loads at run time)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_text and (match := REFERENCE.match(node.value)):
            found.add(match.group(1))
    return found


def test_the_core_reaches_the_apps_only_through_its_declared_seam():
    found = {
        name: refs
        for name, path in modules().items()
        if name.startswith("fedll")
        and (refs := {r for r in references(path) if not r.startswith("fedll")})
    }
    assert found == APP_SEAM


def test_the_reference_scanner_sees_a_reference():
    """The check above has teeth: a reference in any string constant is found."""
    path = ROOT / "fedll" / "run" / "execute.py"
    assert references(path) == APP_SEAM["fedll.run.execute"]


def test_fedll_never_imports_the_flower_apps():
    known = set(modules())
    offenders = {
        name: sorted(
            i for i in imports(path, known, runtime_only=False) if not i.startswith("fedll")
        )
        for name, path in modules().items()
        if name.startswith("fedll")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_circle():
    known = set(modules())
    graph = {
        name: (imports(path, known, runtime_only=True) | references(path)) & known
        for name, path in modules().items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                pytest.fail("import circle: " + " -> ".join([*stack[stack.index(dep) :], dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_report_and_the_results_do_not_import_torch():
    code = (
        "import sys; import fedll.report, fedll.results.rows, fedll.results.columns; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
