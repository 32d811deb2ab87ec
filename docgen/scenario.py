"""The scenario-file reference, generated from the pydantic schema and the model builders.

:func:`sections` walks :class:`fedll.config.schema.Scenario` from the top: every field of every
section, list item and tagged-union member (strategies, CL methods, faults and what a faulty
site sends, differential privacy) becomes one row with its key path, type, default, bounds and
the field's ``description``; the models' arguments come from the registered builders'
signatures (:mod:`fedll.models.registry`), whose docstrings describe them. :func:`markdown`
renders the page. Nothing here is written by hand, so the page changes when the schema does.
"""

from __future__ import annotations

import collections.abc
import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = "Scenario"


@dataclass(frozen=True)
class Row:
    """One key of a section: its full path (``training.epochs``), type, default, bounds and
    description (empty where the schema gives none)."""

    key: str
    type: str
    default: str
    bounds: str
    description: str


@dataclass
class Section:
    """One table of the page: a section, a list's item or a union member (``strategies[]
    name: fedprox``), with the class docstring and its rows; ``model`` is the schema class
    (None for a builder's arguments)."""

    path: str
    title: str
    doc: str
    model: type[BaseModel] | None = None
    rows: list[Row] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        """The heading's id: the path with every other character than [a-z0-9] as ``-``."""
        text = "".join(c if c.isalnum() else "-" for c in self.path.lower())
        return "key-" + "-".join(part for part in text.split("-") if part)


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """An annotation without its ``Annotated`` layers, and the metadata they carried."""
    metadata: list[Any] = []
    while typing.get_origin(annotation) is Annotated:
        metadata.extend(annotation.__metadata__)
        annotation = typing.get_args(annotation)[0]
    return annotation, metadata


def _bounds(metadata: list[Any]) -> list[str]:
    """``≥ 0``, ``< 1``, ``at least 1 item`` ... from annotated-types and Field metadata."""
    out = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            out.extend(_bounds(item.metadata))
            continue
        for kind, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if isinstance(item, getattr(annotated_types, kind.capitalize())):
                out.append(f"{symbol} {getattr(item, kind)}")
        if isinstance(item, annotated_types.MinLen) and item.min_length:
            plural = "s" if item.min_length > 1 else ""
            out.append(f"at least {item.min_length} item{plural}")
        if isinstance(item, annotated_types.MaxLen):
            out.append(f"at most {item.max_length} items")
    return out


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _union_members(annotation: Any) -> list[Any] | None:
    annotation, _ = _unwrap(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return list(typing.get_args(annotation))
    return None


def _tag(model: type[BaseModel]) -> str | None:
    """The ``name`` literal a tagged-union member is selected by, if it has one."""
    name = model.model_fields.get("name")
    if name is None:
        return None
    inner, _ = _unwrap(name.annotation)
    if typing.get_origin(inner) is Literal:
        return str(typing.get_args(inner)[0])
    return None


class _Walker:
    """Collects the sections reachable from the root model, each once, in reading order."""

    def __init__(self, links: dict[type[BaseModel], str]) -> None:
        self.sections: list[Section] = []
        self.links = links  # model class -> section anchor, where already documented

    def type_text(self, annotation: Any, path: str) -> tuple[str, list[str]]:
        """The type of ``annotation`` in words, and its bounds (those of a list's items as
        ``each ...``); every model it holds is documented (once) under ``path``."""
        annotation, metadata = _unwrap(annotation)
        own = _bounds(metadata)
        origin = typing.get_origin(annotation)
        if annotation is type(None):
            return "null", own
        if annotation is Any:
            return "any", own
        if origin is Literal:
            return " \\| ".join(f"`{_yaml(v)}`" for v in typing.get_args(annotation)), own
        if origin in (Union, types.UnionType):
            members = typing.get_args(annotation)
            tagged = [m for m in members if _is_model(m) and _tag(m)]
            if len(tagged) > 2:  # a tagged union: one section per member, keyed by name
                for member in tagged:
                    self.model(member, path, tag=_tag(member))
                names = ", ".join(f"`{_tag(m)}`" for m in tagged)
                return f"one of the options below, chosen by `name` ({names})", own
            parts, bounds = [], list(own)
            for member in members:
                text, inner = self.type_text(member, path)
                parts.append(text)
                bounds.extend(inner)
            return " \\| ".join(parts), bounds
        sequences = (list, tuple, set, frozenset, collections.abc.Sequence)
        if origin in sequences or annotation in sequences:
            args = typing.get_args(annotation)
            if origin is tuple and args and Ellipsis not in args:
                texts = [self.type_text(a, path)[0] for a in args]
                return "[" + ", ".join(texts) + "]", own
            if not args:
                return "list", own
            text, inner = self.type_text(args[0], f"{path}[]")
            text = f"({text})" if " \\| " in text else text
            return f"list of {text}", own + [f"each {b}" for b in inner]
        if origin in (dict, collections.abc.Mapping, typing.Mapping):
            key, value = typing.get_args(annotation)
            key_text, _ = self.type_text(key, path)
            text, _ = self.type_text(value, f"{path}.<name>")
            key_text = "name" if _unwrap(key)[0] is str else key_text
            key_text = f"({key_text})" if " \\| " in key_text else key_text
            return f"mapping of {key_text} to {text}", own
        if _is_model(annotation):
            anchor = self.model(annotation, path)
            return f"[{_section_word(annotation)}](#{anchor})", own
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            return " \\| ".join(f"`{m.value}`" for m in annotation), own
        if annotation is Path:
            return "path", own
        if isinstance(annotation, type):
            return annotation.__name__, own
        return str(annotation).replace("typing.", ""), own

    def model(self, model: type[BaseModel], path: str, tag: str | None = None) -> str:
        """Document ``model`` under ``path`` (once); returns its section's anchor."""
        if model in self.links:
            return self.links[model]
        title = f"`{path}`" + (f" with `name: {tag}`" if tag else "")
        section = Section(
            path=path + (f"@{tag}" if tag else ""), title=title, doc=_doc(model), model=model
        )
        if section.anchor in {s.anchor for s in self.sections}:  # a second form of one key
            section.path = f"{section.path}@{model.__name__.lower()}"
            section.title = f"`{path}` as {model.__name__}"
        self.links[model] = section.anchor
        self.sections.append(section)
        for name, info in model.model_fields.items():
            key = f"{path}.{name}" if path else name
            text, bounds = self.type_text(info.annotation, key)
            section.rows.append(
                Row(
                    key=key,
                    type=text,
                    default=_default(info),
                    bounds=", ".join(_bounds(info.metadata) + bounds),
                    description=_description(info, name, tag),
                )
            )
        return section.anchor


def _description(info: FieldInfo, name: str, tag: str | None) -> str:
    """The field's description; a tagged-union member's ``name`` says what it selects."""
    if tag is not None and name == "name" and not info.description:
        return f"`{tag}` selects this option set"
    return rst_to_markdown(info.description or "")


def rst_to_markdown(text: str) -> str:
    """Docstring text with Sphinx roles (``:mod:`x```, ``:class:`~a.B```) as code spans."""
    text = re.sub(r":(?:mod|func|class|data|meth|attr|exc|obj):`~?([^`]+)`", r"`\1`", text)
    return inspect.cleandoc(text).strip()


def _section_word(model: type[BaseModel]) -> str:
    return f"{model.__name__} (a section)"


def _doc(model: type[BaseModel]) -> str:
    doc = model.__doc__ or ""
    if model.__doc__ in (BaseModel.__doc__, None):
        return ""
    return rst_to_markdown(doc)


def _yaml(value: Any) -> str:
    """A value as compact YAML (flow style)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    elif isinstance(value, (list, tuple)):
        value = [
            v.model_dump(mode="json", exclude_defaults=True) if isinstance(v, BaseModel) else v
            for v in value
        ]
    elif isinstance(value, Path):
        value = str(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return f"`{_yaml(info.default_factory())}`"  # type: ignore[call-arg]
    if info.default is PydanticUndefined:
        return "required"
    if isinstance(info.default, BaseModel):
        return "its section's defaults"
    return f"`{_yaml(info.default)}`"


def builder_sections(path: str = "models.<name>") -> list[Section]:
    """One section per registered model builder: its keyword arguments (type, default, bounds
    from the signature's annotations), with the builder's docstring."""
    from fedll.models import model_names
    from fedll.models.registry import _builder, _parameters  # the registry's own view

    walker = _Walker({})
    out = []
    for name in model_names():
        builder = _builder(name)
        function = getattr(builder, "func", builder)
        fixed = getattr(builder, "keywords", {})
        hints = typing.get_type_hints(function, include_extras=True)
        fixed_text = ", ".join(f"{k}={v!r}" for k, v in fixed.items())
        doc = rst_to_markdown(function.__doc__ or "")
        if fixed_text:
            doc = f"`{function.__name__}` with {fixed_text}.\n\n{doc}"
        section = Section(path=f"{path}@{name}", title=f"`{path}` with `name: {name}`", doc=doc)
        for key, parameter in _parameters(builder).items():
            text, bounds = walker.type_text(hints.get(key, Any), f"{path}.{key}")
            default = (
                "required"
                if parameter.default is inspect.Parameter.empty
                else f"`{_yaml(_plain(parameter.default))}`"
            )
            section.rows.append(
                Row(
                    key=f"{path}.{key}",
                    type=text,
                    default=default,
                    bounds=", ".join(bounds),
                    description="",
                )
            )
        out.append(section)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def sections() -> list[Section]:
    """Every section of the scenario file, from the top (``Scenario``) down."""
    from fedll.config.schema import Scenario

    walker = _Walker({})
    walker.model(Scenario, "")
    found = walker.sections
    found[0].path, found[0].title = ROOT, "The top level"
    return found


def schema_rows() -> Iterator[Row]:
    """Every row generated from the pydantic schema (not the builders' arguments)."""
    for section in sections():
        yield from section.rows


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split()) if text else ""


def _table(section: Section, describe: Callable[[Row], str]) -> list[str]:
    lines = ["| key | type | default | bounds | description |", "|---|---|---|---|---|"]
    for row in section.rows:
        lines.append(
            f"| `{row.key}` | {row.type} | {row.default} | {_cell(row.bounds)} | {describe(row)} |"
        )
    return lines


def markdown() -> str:
    """The generated part of the scenario reference page."""
    lines: list[str] = []
    for section in sections():
        lines += [f"### {section.title} {{#{section.anchor}}}", ""]
        if section.doc:
            lines += [section.doc, ""]
        lines += [*_table(section, lambda row: _cell(row.description)), ""]
    lines += [
        "### Model arguments {#key-models-arguments}",
        "",
        "Every other key of a `models.<name>` entry is an argument of the builder its `name`"
        " selects, checked against the builder's signature (types and bounds below) and by"
        " building it on PyTorch's meta device; the builder's docstring says what each does.",
        "",
    ]
    for section in builder_sections():
        lines += [f"#### {section.title} {{#{section.anchor}}}", ""]
        if section.doc:
            lines += [section.doc, ""]
        lines += [*_table(section, lambda row: ""), ""]
    return "\n".join(lines)
