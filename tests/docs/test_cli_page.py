"""The CLI reference (docgen.cli): generated from the typer app, it lists every command and
every visible argument and option with its help."""

from __future__ import annotations

from pathlib import Path

from docgen import cli as page

ROOT = Path(__file__).resolve().parents[2]


def sections(text: str) -> dict[str, str]:
    """The page's text per command heading."""
    out: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("## `fedll"):
            current = line.split("`")[1]
            out[current] = ""
        elif current:
            out[current] += line + "\n"
    return out


def test_every_command_and_option_is_on_the_page():
    import click

    root = page.group()
    context = click.Context(root, info_name="fedll")
    text = sections(page.markdown())
    names = root.list_commands(context)
    assert {"cohort", "run", "report", "certs", "segment", "site-data", "site"} <= set(names)
    assert set(text) == {"fedll (every command)", *(f"fedll {n}" for n in names)}
    for name in names:
        command = root.get_command(context, name)
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            flags = param.opts if isinstance(param, click.Option) else [param.human_readable_name]
            for flag in flags:
                assert f"`{flag}`" in text[f"fedll {name}"], (name, flag)


def test_hidden_options_stay_hidden_and_arguments_have_their_help():
    text = sections(page.markdown())
    assert "--bootstrap" not in text["fedll report"]
    assert "| `SCENARIO` | path | required | scenario YAML |" in text["fedll run"]
    assert "| `--cpus-per-trial` | integer range (x>=1) |" in text["fedll run"]
    assert (
        "| `--set` | text |  | override KEY=VALUE (YAML value) (repeatable) |" in text["fedll run"]
    )
    assert "fedll segment [OPTIONS] MODEL INPUT" in text["fedll segment"]
    assert (
        "| `--verbose`, `-v` | flag | off | log progress details |" in text["fedll (every command)"]
    )


def test_the_reference_page_holds_the_generated_part():
    assert (
        "<!-- fedll-docs: cli-reference -->" in (ROOT / "docs" / "reference" / "cli.md").read_text()
    )
