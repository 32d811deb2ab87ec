"""The command-line reference, generated from the typer app (:data:`fedll.cli.app`).

typer builds a click command group; every command's usage, help text and parameters
(arguments and options, with their type, default and help) are read from it, so the page is
what ``fedll COMMAND --help`` says. Hidden options are left out, as ``--help`` leaves them.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class Parameter:
    """One argument or option: how it is written, its type, default and help."""

    name: str
    flags: str
    kind: str
    type: str
    default: str
    help: str


@dataclass(frozen=True)
class Command:
    """One ``fedll`` command (``""``: the group itself, whose options precede any command)."""

    name: str
    usage: str
    help: str
    parameters: tuple[Parameter, ...]


def group() -> click.Group:
    """The ``fedll`` click group, as typer builds it."""
    import typer

    from fedll.cli import app

    command = typer.main.get_command(app)
    assert isinstance(command, click.Group)
    return command


def _type(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    kind = param.type
    if isinstance(kind, click.Choice):
        return " \\| ".join(f"`{c}`" for c in kind.choices)
    if isinstance(kind, click.types._NumberRangeBase):  # an IntRange/FloatRange (min=...)
        return f"{kind.name} ({kind._describe_range()})"
    name = getattr(kind, "name", str(kind))
    return {"text": "text", "integer": "integer", "float": "number"}.get(name, name)


def _default(param: click.Parameter) -> str:
    if param.required:
        return "required"
    value = param.default
    if callable(value):
        value = value()
    if isinstance(param, click.Option) and param.is_flag:
        return "on" if value else "off"
    if value is None or value == () or value == []:
        return ""
    return f"`{value}`" if value != "" else '`""`'


def _flags(param: click.Parameter) -> str:
    if isinstance(param, click.Argument):
        return f"`{param.human_readable_name}`"
    opts = [*param.opts, *param.secondary_opts]
    return ", ".join(f"`{o}`" for o in opts)


def declared_help(callback: object) -> dict[str, str]:
    """The ``help=`` each parameter of a command function declares (typer's ``Argument`` and
    ``Option`` in its annotations): click's arguments do not keep it, and ``--help`` leaves
    it out for them."""
    import typer.models

    out = {}
    hints = typing.get_type_hints(inspect.unwrap(callback), include_extras=True)  # type: ignore[arg-type]
    for name, annotation in hints.items():
        for meta in getattr(annotation, "__metadata__", ()):
            if isinstance(meta, typer.models.ParameterInfo) and meta.help:
                out[name] = meta.help
    return out


def _parameter(param: click.Parameter, declared: dict[str, str]) -> Parameter:
    help_text = getattr(param, "help", None) or declared.get(param.name or "", "")
    if isinstance(param, click.Option) and param.multiple and "repeatable" not in help_text:
        help_text = f"{help_text} (repeatable)".strip()
    return Parameter(
        name=param.name or "",
        flags=_flags(param),
        kind="argument" if isinstance(param, click.Argument) else "option",
        type=_type(param),
        default=_default(param),
        help=" ".join(help_text.split()),
    )


def _visible(param: click.Parameter) -> bool:
    return not getattr(param, "hidden", False)


def commands() -> list[Command]:
    """The group (its own options) and each command, in the order ``fedll --help`` lists."""
    root = group()
    context = click.Context(root, info_name="fedll")
    out = [
        Command(
            name="",
            usage=" ".join(root.collect_usage_pieces(context)),
            help=inspect.cleandoc(root.help or ""),
            parameters=tuple(_parameter(p, {}) for p in root.params if _visible(p)),
        )
    ]
    for name in root.list_commands(context):
        command = root.get_command(context, name)
        assert command is not None
        sub = click.Context(command, info_name=f"fedll {name}", parent=context)
        pieces = command.collect_usage_pieces(sub)
        declared = declared_help(command.callback) if command.callback else {}
        out.append(
            Command(
                name=name,
                usage=f"fedll {name} " + " ".join(pieces),
                help=inspect.cleandoc(command.help or ""),
                parameters=tuple(_parameter(p, declared) for p in command.params if _visible(p)),
            )
        )
    return out


def markdown() -> str:
    """The generated part of the CLI reference page."""
    lines: list[str] = []
    for command in commands():
        title = f"fedll {command.name}" if command.name else "fedll (every command)"
        anchor = f"fedll-{command.name}" if command.name else "fedll"
        usage = f"fedll {command.usage}" if not command.name else command.usage
        lines += [f"## `{title}` {{#{anchor}}}", "", "```text", usage.strip(), "```", ""]
        if command.help:
            lines += [command.help, ""]
        if command.parameters:
            lines += ["| parameter | type | default | what |", "|---|---|---|---|"]
            for p in command.parameters:
                what = p.help.replace("|", "\\|")
                lines.append(f"| {p.flags} | {p.type} | {p.default} | {what} |")
            lines.append("")
    return "\n".join(lines)
