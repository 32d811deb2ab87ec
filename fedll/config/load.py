"""Reading a scenario: YAML text, ``--set`` overrides, validation, and the resolved dump.

Every problem raises :class:`~fedll.errors.ConfigError` with one line naming the file and the
key (``scenario.yaml: models.dycnn.top_k: must be in 1..num_kernels=4, got 99``).

A document is read within bounds (:data:`MAX_SCENARIO_BYTES`, :data:`MAX_VALUES`,
:data:`MAX_DEPTH`, :data:`MAX_INT_CHARS`), the file's and each ``--set`` value's alike, so that
no document (a YAML alias bomb, a 50 MB file, a list nested 5000 deep) costs more than a
second and a few MB to refuse.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedll.config.options import SEND_TAGS, ContinualOptions, option_names
from fedll.config.schema import Scenario
from fedll.config.strategies import StrategyOptions
from fedll.errors import ConfigError

MAX_SCENARIO_BYTES = 2**20
"""A scenario file's size bound (1 MiB): a scenario is a few kB, an explicit ordering of 20,000
arrivals some 300 kB; PyYAML's pure-Python parser reads about 0.5 MB a second."""
MAX_VALUES = 100_000
"""Values (scalars, lists and mappings) a document may hold, a YAML alias counted as often as
it is used: a billion-laughs document of a few hundred bytes expands to 10^9 of them."""
MAX_DEPTH = 32
"""How deep lists and mappings may nest (a scenario needs 5 levels; PyYAML's composer
recurses, so a list nested 5000 deep is a RecursionError)."""
MAX_INT_CHARS = 100
"""The longest integer literal (a scenario's largest integers have 10 digits; Python refuses
to parse 4300 and a sexagesimal ``1:2:...`` of 10^5 parts takes minutes)."""


def format_error(source: str, error: ValidationError) -> str:
    """The first problem of ``error`` as one line: ``source: key.path: message``."""
    first = error.errors()[0]
    tags = {*option_names(StrategyOptions), *option_names(ContinualOptions)}
    # a tagged union puts its tag into the location: strategies.1.fedprox.mu (strategies, cl),
    # faults.0.send.ScaledUpdate.scale (a fault's corruption)
    loc = [
        part
        for i, part in enumerate(first["loc"])
        if not (i and isinstance(first["loc"][i - 1], int) and part in tags)
        and not (i and first["loc"][i - 1] == "send" and part in SEND_TAGS)
        and part != "[key]"
    ]
    key = ".".join(str(part) for part in loc)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "union_tag_invalid":
        ctx = first.get("ctx", {})
        message = f"unknown name {ctx.get('tag')!r} (known: {ctx.get('expected_tags')})"
    elif first["type"] == "union_tag_not_found":
        message = "missing 'name'"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    where = f"{key}: " if key else ""  # cross-field errors name their key in the message
    return f"{source}: {where}{message}{more}"


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], source: str) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw scenario mapping."""
    result = json.loads(json.dumps(raw, default=str))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: --set {item!r}: expected KEY=VALUE")
        try:
            value = _parse(text) if text else ""
        except _Refused as refused:
            raise ConfigError(f"{source}: --set {key}: {refused.message}") from None
        except (yaml.YAMLError, _DuplicateKey):
            raise ConfigError(f"{source}: --set {key}: {text!r} is not a YAML value") from None
        node: Any = result
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise ConfigError(f"{source}: --set {key}: cannot descend into {part!r}")
        last = parts[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"{source}: --set {key}: cannot set {last!r}")
    return result


def parse_scenario(
    raw: Mapping[str, Any], source: str = "<scenario>", base_dir: Path | None = None
) -> Scenario:
    """Validate a raw mapping; relative paths resolve against ``base_dir``."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        scenario = Scenario.model_validate(dict(raw))
    except ValidationError as error:
        raise ConfigError(format_error(source, error)) from None
    base = base_dir or Path.cwd()
    updates: dict[str, Any] = {}
    if scenario.cohort.path is not None and not scenario.cohort.path.is_absolute():
        updates["cohort"] = scenario.cohort.model_copy(update={"path": base / scenario.cohort.path})
    if scenario.cache_dir is not None and not scenario.cache_dir.is_absolute():
        updates["cache_dir"] = base / scenario.cache_dir
    scenario = scenario.model_copy(update=updates) if updates else scenario
    if scenario.cohort.path is not None and not scenario.cohort.path.exists():
        raise ConfigError(f"{source}: cohort.path: {scenario.cohort.path} does not exist")
    _readable_back(scenario, source)
    return scenario


def _readable_back(scenario: Scenario, source: str) -> None:
    """ConfigError unless the resolved scenario, as its run directory keeps it
    (:func:`dump_scenario`: defaults and aliases written out), is within the bounds that
    fedll reads a scenario in, so that no run directory holds a scenario.yaml that ``fedll
    report`` or a resumed run would refuse (a 100-character site name through a YAML alias
    is 3 bytes in the file and 100 in the dump)."""
    where = f"{source}: the resolved scenario (as a run directory keeps it)"
    data = scenario.model_dump(mode="json", exclude_none=True)
    try:
        _check_bounds(data)
    except _Refused as refused:
        raise ConfigError(f"{where}: {refused.message}") from None
    size = len(yaml.safe_dump(data, sort_keys=False).encode())
    if size > MAX_SCENARIO_BYTES:
        raise ConfigError(f"{where}: {size} bytes, more than {MAX_SCENARIO_BYTES} (1 MiB)")


class _DuplicateKey(Exception):
    def __init__(self, key: object, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _Refused(Exception):
    """A document past one of the bounds: ``message`` names the key where it is known."""

    def __init__(self, message: str, mark: yaml.Mark | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = None if mark is None else mark.line + 1


class _ScenarioLoader(yaml.SafeLoader):
    """YAML's safe loader, but a mapping that names a key twice is an error (YAML keeps the
    last, silently: two ``training:`` blocks would lose the first), collections nest at most
    :data:`MAX_DEPTH` deep (refused as the parser reaches that depth, before the composer's
    recursion) and an integer literal has at most :data:`MAX_INT_CHARS` characters."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str | None] = []  # the key or index of each node being composed

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if isinstance(index, yaml.ScalarNode):  # a mapping's value, under its key
            self._path.append(str(index.value))
        else:  # a list item (int), a mapping key or the document (None)
            self._path.append(None if index is None else str(index))
        try:
            collection = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
            if collection and len(self._path) > MAX_DEPTH:
                where = _key([part for part in self._path if part is not None])
                raise _Refused(
                    f"{where}nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # << merges may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen.setdefault(key, line)  # type: ignore[arg-type]
        return super().construct_mapping(node, deep=deep)

    def construct_bounded_int(self, node: yaml.ScalarNode) -> int:
        if len(node.value) > MAX_INT_CHARS:
            raise _Refused(
                f"an integer literal of {len(node.value)} characters (at most {MAX_INT_CHARS})",
                node.start_mark,
            )
        return self.construct_yaml_int(node)


_ScenarioLoader.add_constructor("tag:yaml.org,2002:int", _ScenarioLoader.construct_bounded_int)


def _key(path: Sequence[str]) -> str:
    """``key.path: `` for a message, empty at the top level."""
    return ".".join(path) + ": " if path else ""


def _parse(text: str) -> Any:
    """The document in ``text``; _Refused past a bound, _DuplicateKey or a YAMLError."""
    if len(text) > MAX_SCENARIO_BYTES:
        raise _Refused(f"more than {MAX_SCENARIO_BYTES} characters (1 MiB)")
    loader = _ScenarioLoader(text)
    try:
        value = loader.get_single_data()
    finally:
        loader.dispose()
    _check_bounds(value)
    return value


def _check_bounds(value: Any) -> None:
    """_Refused unless ``value`` (a parsed document) holds at most :data:`MAX_VALUES` values,
    nested at most :data:`MAX_DEPTH` deep, and no list or mapping that holds itself (a
    recursive YAML alias). A value reached twice (an alias) counts twice: what
    ``--set``, validation and the resolved dump would copy. Stops at the first value past a
    bound, so a billion-laughs document costs :data:`MAX_VALUES` steps."""
    left = MAX_VALUES

    def visit(node: Any, path: tuple[str, ...], holders: frozenset[int]) -> None:
        nonlocal left
        left -= 1
        if left < 0:
            raise _Refused(
                f"{_key(path)}more than {MAX_VALUES} values (a YAML alias counts each time "
                "it is used); a scenario holds hundreds"
            )
        if not isinstance(node, dict | list):
            return
        if id(node) in holders:
            raise _Refused(f"{_key(path)}a YAML alias inside the collection it names")
        if len(path) >= MAX_DEPTH:
            raise _Refused(f"{_key(path)}nested deeper than {MAX_DEPTH} levels")
        items = node.items() if isinstance(node, dict) else enumerate(node)
        inside = holders | {id(node)}
        for key, child in items:
            visit(child, (*path, str(key)), inside)

    visit(value, (), frozenset())


def read_yaml(text: str, source: str) -> Any:
    """Parse YAML text within the bounds; ConfigError naming the line of a syntax error or a
    duplicate key, or the key (or line) where the document passes a bound."""
    try:
        return _parse(text)
    except _Refused as refused:
        where = f" line {refused.line}:" if refused.line is not None else ""
        raise ConfigError(f"{source}:{where} {refused.message}") from None
    except _DuplicateKey as dup:
        raise ConfigError(
            f"{source}: line {dup.second}: duplicate key {dup.key!r} (first at line {dup.first})"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}:{where}: not valid YAML") from None


def load_scenario(path: Path, overrides: Sequence[str] = ()) -> Scenario:
    """Read, override and validate a scenario YAML file (UTF-8)."""
    source = str(path)
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_SCENARIO_BYTES + 1)  # a device or FIFO need not end
    except OSError as error:
        raise ConfigError(f"{source}: cannot read scenario ({error.strerror})") from None
    if len(data) > MAX_SCENARIO_BYTES:
        raise ConfigError(
            f"{source}: larger than {MAX_SCENARIO_BYTES} bytes (1 MiB), far more than a "
            "scenario holds"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{source}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); "
            "save the scenario as UTF-8"
        ) from None
    raw = read_yaml(text, source)
    if raw is None:
        raise ConfigError(f"{source}: the file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    if overrides:
        raw = apply_overrides(raw, overrides, source)
        try:  # each value is within the bounds; together they may not be
            _check_bounds(raw)
        except _Refused as refused:
            raise ConfigError(f"{source}: {refused.message} (with the --set values)") from None
    return parse_scenario(raw, source, base_dir=Path(path).resolve().parent)


def dump_scenario(scenario: Scenario) -> str:
    """The resolved scenario as YAML (what a run directory keeps)."""
    data = scenario.model_dump(mode="json", exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False)
