"""The package layering: fedll's core never imports the Flower apps (sites/, strategies/) and
reaches them by reference ("module:attribute" strings, which load a module at run time as an
import does) in one declared place, no module takes part in an import circle (references
counted), and the report and results stay free of torch. And the sizes: no module over
:data:`MAX_FILE_LINES` lines, no function whose code is over :data:`MAX_FUNCTION_LINES` lines
without a reason (docs/contributing.md)."""

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
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
"""A function's code: its statements, not its signature (a typer command's options are
declared there) or its docstring; over it, the docstring says why, with "Long because"."""
REASON = "Long because"
PENDING_FILES: set[str] = set()
"""Modules allowed over the limit while a restructuring shrinks them (none now)."""
PENDING_FUNCTIONS: set[str] = set()
"""Functions allowed over the limit while a restructuring shrinks them (none now)."""


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


def python_files() -> dict[str, Path]:
    return {
        path.relative_to(ROOT).as_posix(): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """The functions (and methods) of ``source`` whose code is over ``limit`` lines and whose
    docstring does not say why (:data:`REASON`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        docstring = ast.get_docstring(node)
        body = node.body[1:] if docstring is not None and len(node.body) > 1 else node.body
        if node.end_lineno - body[0].lineno + 1 > limit and REASON not in (docstring or ""):
            found.append(node.name)
    return found


def test_no_module_is_over_the_line_limit():
    over = {
        name: len(path.read_text().splitlines())
        for name, path in python_files().items()
        if len(path.read_text().splitlines()) > MAX_FILE_LINES
    }
    assert {name: n for name, n in over.items() if name not in PENDING_FILES} == {}


def test_no_function_is_over_the_line_limit_without_a_reason():
    over = {
        f"{name}:{function}"
        for name, path in python_files().items()
        for function in long_functions(path.read_text())
    }
    assert sorted(over - PENDING_FUNCTIONS) == []


def test_the_pending_sets_name_only_what_is_still_over():
    """An entry is dropped as soon as its module or function is within the limits."""
    files = python_files()
    still = {
        name for name in PENDING_FILES if len(files[name].read_text().splitlines()) > MAX_FILE_LINES
    }
    assert still == PENDING_FILES
    functions = {
        entry
        for entry in PENDING_FUNCTIONS
        if entry.split(":")[1] in long_functions(files[entry.split(":")[0]].read_text())
    }
    assert functions == PENDING_FUNCTIONS


def test_the_function_limit_counts_code_and_hears_a_reason():
    """The check has teeth: 61 lines of code fail, 60 pass, whatever the signature and the
    docstring hold; a docstring with the reason passes."""
    code = "\n".join(f"    x{i} = {i}" for i in range(61))
    signature = "def f(\n" + "".join(f"    a{i}: int = 0,\n" for i in range(30)) + ") -> None:"
    doc = '    """What f does.\n' + "    more\n" * 30 + '    """'
    assert long_functions(f"{signature}\n{doc}\n{code}\n") == ["f"]
    short = "\n".join(code.splitlines()[:60])
    assert long_functions(f"{signature}\n{doc}\n{short}\n") == []
    reason = '    """What f does. Long because it is a table."""'
    assert long_functions(f"def f():\n{reason}\n{code}\n") == []
