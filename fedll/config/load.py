"""Reading a scenario: YAML text, ``--set`` overrides, validation, and the resolved dump.

Every problem raises :class:`~fedll.errors.ConfigError` with one line naming the file and the
key (``scenario.yaml: models.dycnn.top_k: must be in 1..num_kernels=4, got 99``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedll.config.options import SEND_TAGS, ContinualOptions, StrategyOptions, option_names
from fedll.config.schema import Scenario
from fedll.errors import ConfigError


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
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
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
    return scenario


class _DuplicateKey(Exception):
    def __init__(self, key: object, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a mapping that names a key twice is an error (YAML keeps the
    last, silently: two ``training:`` blocks would lose the first)."""

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


def read_yaml(text: str, source: str) -> Any:
    """Parse YAML text; ConfigError naming the line of a syntax error or a duplicate key."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a safe loader)
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
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{source}: cannot read scenario ({error.strerror})") from None
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
    return parse_scenario(raw, source, base_dir=Path(path).resolve().parent)


def dump_scenario(scenario: Scenario) -> str:
    """The resolved scenario as YAML (what a run directory keeps)."""
    data = scenario.model_dump(mode="json", exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False)
