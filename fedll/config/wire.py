"""A typed object as flat kebab-case scalars (a Flower ``ConfigRecord``) and back.

Flower carries configuration as flat records of scalars and lists of scalars, keyed in
kebab case (``batch-size``). :func:`flatten` turns any pydantic model into such a mapping:
nested models and mappings become dotted keys (``training.batch-size``); a value a record
cannot hold (None, an empty or mixed list, an empty mapping) travels as JSON under its key
with ``#json`` appended. :func:`unflatten` inverts it, so ``Model.model_validate(unflatten(
flatten(x))) == x`` for every model whose field names are snake case (tested as a round trip).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

Scalar = bool | int | float | str
JSON_SUFFIX = "#json"


def flatten(model: BaseModel) -> dict[str, Any]:
    """``model`` as flat kebab-case keys (see the module docstring)."""
    flat: dict[str, Any] = {}
    _walk(model.model_dump(mode="json"), (), flat)
    return flat


def unflatten(record: Mapping[str, Any]) -> dict[str, Any]:
    """The nested snake-case mapping :func:`flatten` came from (for ``model_validate``)."""
    nested: dict[str, Any] = {}
    for key, value in record.items():
        if key.endswith(JSON_SUFFIX):
            key, value = key.removesuffix(JSON_SUFFIX), json.loads(value)
        elif isinstance(value, tuple):
            value = list(value)
        parts = [part.replace("-", "_") for part in key.split(".")]
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key}: {part!r} is both a value and a section")
        node[parts[-1]] = value
    return nested


def _walk(value: Any, path: tuple[str, ...], flat: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            if not isinstance(key, str) or any(c in key for c in ".#-"):
                raise ValueError(f"{'.'.join(path)}: key {key!r} cannot travel in a record")
            _walk(item, (*path, key), flat)
        return
    key = ".".join(part.replace("_", "-") for part in path)
    if _native(value):
        flat[key] = value
    else:
        flat[key + JSON_SUFFIX] = json.dumps(value)


def _native(value: Any) -> bool:
    """Whether a ``ConfigRecord`` holds ``value`` as it is: a scalar, or a non-empty list of
    scalars of one type."""
    if isinstance(value, Scalar):
        return True
    if isinstance(value, list) and value:
        kind = type(value[0])
        return kind in (bool, int, float, str) and all(type(v) is kind for v in value)
    return False
