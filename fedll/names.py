"""The one rule for names that become file or folder names (sites, scenarios, models, keys).

A simple name is 1-100 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or a
digit: it cannot climb out of a folder (``..``), hide (``.name``), read as an option
(``-name``) or hold a path separator.
"""

from __future__ import annotations

import re

SIMPLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
RULE = "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_simple_name(name: object) -> bool:
    """Whether ``name`` is a string that follows the rule."""
    return isinstance(name, str) and SIMPLE_NAME.match(name) is not None


def check_simple_name(name: object, what: str) -> str:
    """``name`` when it follows the rule; else ValueError naming ``what``."""
    if not is_simple_name(name):
        raise ValueError(f"{what} {name!r} is not a simple name ({RULE})")
    assert isinstance(name, str)
    return name
