"""Reading a scenario document within bounds: YAML alias bombs, huge files, deep nesting and
huge literals are one-line errors naming the file (and the key), in bounded memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from fedll.config import load_scenario
from fedll.config.load import MAX_DEPTH, MAX_SCENARIO_BYTES, MAX_VALUES
from fedll.errors import ConfigError

LAUGHS = "\n".join(
    ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
)
"""Billion laughs: ten lines whose last names 9**10 (3.5e9) strings through aliases."""


def refusal(path: Path, overrides: Sequence[str] = ()) -> str:
    """The one-line message of the ConfigError that loading ``path`` raises."""
    with pytest.raises(ConfigError) as caught:
        load_scenario(path, overrides)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}:"), message
    return message


def with_exclude(write_scenario, text: str) -> Path:
    """The tiny scenario, with ``exclude:`` followed by ``text`` (YAML) appended."""
    path = write_scenario()
    path.write_text(path.read_text() + "exclude:\n" + textwrap.indent(text, "  ") + "\n")
    return path


def test_a_billion_laughs_under_exclude_is_refused_by_its_count(write_scenario):
    path = with_exclude(write_scenario, "- " + LAUGHS.replace("\n", "\n  "))
    message = refusal(path)
    # a0 to a4 expand to 74,732 values (10 + 91 + 820 + 7381 + 66430), a5
    # alone to 597,871: the count passes 100,000 inside a5
    assert "exclude.0.a5." in message and f"more than {MAX_VALUES} values" in message
    assert "a YAML alias counts each time it is used" in message


def test_a_billion_laughs_in_a_set_value_is_refused_naming_the_option(write_scenario):
    laughs = "{" + LAUGHS.replace("\n", ", ") + "}"
    message = refusal(write_scenario(), [f"exclude=[{laughs}]"])
    assert "--set exclude: 0.a5." in message and f"more than {MAX_VALUES} values" in message


def test_set_values_within_the_bounds_alone_are_refused_together(write_scenario):
    # each value is 600 lists of 100 zeros through an alias (60,601 values), the two together
    # past the bound
    half = "[&z [" + ", ".join(["0"] * 100) + "]" + ", *z" * 599 + "]"
    overrides = [f"exclude=[{{seed: {half}}}]", f"models.static.pad={half}"]
    assert f"more than {MAX_VALUES} values (a YAML alias" in refusal(write_scenario(), overrides)


def test_a_billion_laughs_is_refused_in_a_few_mb(write_scenario, tmp_path):
    """In a process allowed 300 MiB of address space more than it has after imports (the
    expansion of today's document without the bound needs GBs): the one-line error."""
    if sys.platform != "linux":
        pytest.skip("RLIMIT_AS and /proc/self/status are Linux's")
    path = with_exclude(write_scenario, "- " + LAUGHS.replace("\n", "\n  "))
    script = textwrap.dedent(
        f"""
        import resource, sys
        from pathlib import Path
        from fedll.config import load_scenario
        from fedll.errors import ConfigError
        status = Path("/proc/self/status").read_text().split("VmSize:")[1]
        size = int(status.split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + 300 * 2**20, resource.RLIM_INFINITY))
        try:
            load_scenario(Path({str(path)!r}))
        except ConfigError as error:
            print(error)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"more than {MAX_VALUES} values" in done.stdout, done.stdout


def test_a_list_nested_5000_deep_is_refused_at_the_bound(write_scenario):
    path = with_exclude(write_scenario, "[" * 5000 + "]" * 5000)
    message = refusal(path)
    assert f"exclude.0{'.0' * (MAX_DEPTH - 2)}: nested deeper than {MAX_DEPTH} levels" in message


def test_a_mapping_nested_deep_is_refused_naming_its_line(write_scenario):
    path = with_exclude(write_scenario, "- " + "{a: " * 100 + "1" + "}" * 100)
    line = path.read_text().splitlines().index("exclude:") + 2
    message = refusal(path)
    assert f": line {line}: exclude.0.a" in message and "nested deeper than" in message


def test_a_deep_key_of_a_set_is_refused(write_scenario):
    message = refusal(write_scenario(), ["exclude" + ".a" * 40 + "=1"])
    assert f"nested deeper than {MAX_DEPTH} levels (with the --set values)" in message


def test_nesting_to_the_bound_is_read(write_scenario):
    # the scenario, exclude and its entry are three levels: 29 lists in it make 32, 30 make 33
    path = with_exclude(write_scenario, "- {x: " + "[" * 29 + "]" * 29 + "}")
    assert "exclude.0.x: unknown axis" in refusal(path)  # read, then the axis is refused
    path = with_exclude(write_scenario, "- {x: " + "[" * 30 + "]" * 30 + "}")
    assert f"nested deeper than {MAX_DEPTH} levels" in refusal(path)


def test_a_recursive_alias_is_refused(write_scenario):
    path = with_exclude(write_scenario, "- &loop {seed: [*loop]}")
    assert "exclude.0.seed.0: a YAML alias inside the collection it names" in refusal(path)


@pytest.mark.parametrize(
    "literal",
    [pytest.param("1" * 5000, id="5000-digits"), pytest.param(":".join(["1"] * 1000), id="base60")],
)
def test_a_huge_integer_literal_is_refused_naming_its_line(write_scenario, literal):
    path = write_scenario()
    path.write_text(path.read_text() + f"seeds: [{literal}]\n")
    line = len(path.read_text().splitlines())
    message = refusal(path)
    assert f": line {line}: an integer literal of {len(literal)} characters" in message


def test_a_file_over_1_mib_is_refused_unread(write_scenario):
    path = write_scenario()
    text = path.read_text()
    path.write_text(text + "#" * (MAX_SCENARIO_BYTES - len(text)) + "\n")
    assert f"larger than {MAX_SCENARIO_BYTES} bytes (1 MiB)" in refusal(path)


def test_a_file_of_1_mib_is_read(write_scenario):
    path = write_scenario()
    text = path.read_text()
    path.write_text(text + "#" * (MAX_SCENARIO_BYTES - len(text) - 1) + "\n")
    assert load_scenario(path).name == "tiny"


def test_a_scenario_whose_resolved_copy_would_pass_the_bounds_is_refused(write_scenario):
    """The run directory keeps the resolved scenario, which fedll reads back (``fedll
    report``, a resumed run): 20,000 arrivals of a 100-character site name, each an alias of
    3 bytes in the file, are 2 MB in the copy."""
    long, other = "a" * 99 + "1", "a" * 99 + "2"
    sites = [{"name": long, "modality": "t2", "patients": 10_000},
             {"name": other, "modality": "flair", "patients": 10}]  # fmt: skip
    path = write_scenario({"sites": sites, "stream": None})
    ordering = f"[&a {long}, {other}, " + ", ".join(["*a"] * 9_999) + f", {other}" * 9 + "]"
    path.write_text(path.read_text() + f"stream:\n  arrival_batch: 1\n  ordering: [{ordering}]\n")
    assert path.stat().st_size < 100_000
    message = refusal(path)
    assert "the resolved scenario (as a run directory keeps it): " in message
    assert f"bytes, more than {MAX_SCENARIO_BYTES} (1 MiB)" in message
