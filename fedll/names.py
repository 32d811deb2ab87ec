"""The one rule for names that become file or folder names (sites, scenarios, models, keys).

A simple name is 1-100 ASCII letters, digits, ``.``, ``_`` or ``-``, starting with a letter or
a digit: it cannot climb out of a folder (``..``), hide (``.name``), read as an option
(``-name``) or hold a path separator. Names outside ASCII are refused: a site's name is a file
and folder name, a Flower node-config value and part of certificates' key file names, and
Unicode spells one name several ways (``é`` composed or decomposed: macOS stores file names
decomposed, Linux as written) and has look-alike letters (Cyrillic ``а`` beside Latin ``a``),
so two sites could share what looks like one name, or one site not find its own folder.
"""

from __future__ import annotations

import re

SIMPLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RULE = "1-100 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
NOT_ASCII = (
    "names outside ASCII are refused: Unicode spells one name several ways and file systems "
    "store them differently"
)


def is_simple_name(name: object) -> bool:
    """Whether ``name`` is a string that follows the rule."""
    return isinstance(name, str) and SIMPLE_NAME.fullmatch(name) is not None


def rule_for(name: object) -> str:
    """The rule, as an error message states it for ``name``: with why ASCII, for a name
    outside it."""
    if isinstance(name, str) and not name.isascii():
        return f"{RULE}; {NOT_ASCII}"
    return RULE


def check_simple_name(name: object, what: str) -> str:
    """``name`` when it follows the rule; else ValueError naming ``what``."""
    if not is_simple_name(name):
        text = repr(name)
        shown = text if len(text) <= 120 else f"{text[:100]}... ({len(text)} characters)"
        raise ValueError(f"{what} {shown} is not a simple name ({rule_for(name)})")
    assert isinstance(name, str)
    return name
