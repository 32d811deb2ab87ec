"""Flower records as plain data: a ``RecordDict`` as JSON values and NumPy arrays, and trees of
those as ``.npz`` bytes, so that what fedll keeps on disk (a checkpoint's site states, a
site's kept state) does not depend on Flower's wire format (protobuf) and survives an
upgrade of Flower.

A record dict is a list of its records in their order, each ``{"name", "kind", "items"}``
with ``kind`` one of ``arrays``, ``metrics``, ``config`` and ``items`` the ``[key, value]``
pairs in order (a JSON object's keys are sorted when it is written). An ``Array`` is its four
public fields (``dtype``, ``shape``, ``stype``, ``data`` as a ``uint8`` array), so it comes
back byte for byte; a config value of bytes is ``{"bytes": uint8 array}``.

A tree (nested mappings and lists of JSON values and arrays) is written as an ``.npz`` without
pickle: ``meta.json`` (the tree, each array replaced by ``{"__array__": its name}``) and the
arrays, named by their path in the tree.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedll.federation.flower_private import recorddict_from_wire

META = "meta.json"
ARRAY = "__array__"
_BYTES = "bytes"
_KINDS = {"arrays": ArrayRecord, "metrics": MetricRecord, "config": ConfigRecord}


def pack(tree: Any) -> bytes:
    """``tree`` as ``.npz`` bytes (NumPy scalars become JSON numbers)."""
    arrays: dict[str, np.ndarray] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, np.ndarray):
            arrays[path.removesuffix("/")] = value
            return {ARRAY: path.removesuffix("/")}
        if isinstance(value, Mapping):
            return {str(k): walk(v, f"{path}{k}/") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v, f"{path}{i}/") for i, v in enumerate(value)]
        if isinstance(value, np.generic):
            return value.item()
        return value

    text = json.dumps(walk(tree, ""), sort_keys=True, allow_nan=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{META: np.frombuffer(text.encode(), dtype=np.uint8)}, **arrays)
    return buffer.getvalue()


def unpack(data: bytes) -> Any:
    """The tree of :func:`pack`; ValueError (naming what is wrong) where ``data`` is not one."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        tree = json.loads(arrays.pop(META).tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(type(error).__name__) from None

    def value(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {ARRAY}:
                if node[ARRAY] not in arrays:
                    raise ValueError(f"array {node[ARRAY]} is missing")
                return arrays[node[ARRAY]]
            return {k: value(v) for k, v in node.items()}
        if isinstance(node, list):
            return [value(v) for v in node]
        return node

    return value(tree)


def record_tree(records: RecordDict) -> list[dict[str, Any]]:
    """``records`` as plain data (see the module's docstring)."""
    out = []
    for name, record in records.items():
        if isinstance(record, ArrayRecord):
            kind, items = "arrays", [[k, _array(a)] for k, a in record.items()]
        elif isinstance(record, MetricRecord):
            kind, items = "metrics", [[k, v] for k, v in record.items()]
        elif isinstance(record, ConfigRecord):
            kind, items = "config", [[k, _config_value(v)] for k, v in record.items()]
        else:
            raise TypeError(f"record {name!r} is a {type(record).__name__}")
        out.append({"name": name, "kind": kind, "items": items})
    return out


def records_from_tree(tree: Any) -> RecordDict:
    """The ``RecordDict`` of :func:`record_tree`; ValueError where ``tree`` is not one."""
    try:
        records: dict[str, Any] = {}
        for entry in tree:
            kind, items = entry["kind"], entry["items"]
            if kind == "arrays":
                records[entry["name"]] = ArrayRecord({k: _from_array(a) for k, a in items})
            else:
                read = _from_config_value if kind == "config" else (lambda v: v)
                records[entry["name"]] = _KINDS[kind]({k: read(v) for k, v in items})
        return RecordDict(records)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{type(error).__name__}: {error}") from None


def records_to_bytes(records: RecordDict) -> bytes:
    """``records`` as ``.npz`` bytes (:func:`pack` of :func:`record_tree`)."""
    return pack({"records": record_tree(records)})


def records_from_bytes(data: bytes) -> RecordDict:
    """The ``RecordDict`` of :func:`records_to_bytes`, or of Flower's wire format (what an
    earlier fedll wrote); ValueError where ``data`` is neither."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return recorddict_from_wire(data)
    tree = unpack(data)
    if not isinstance(tree, dict) or "records" not in tree:
        raise ValueError("no records")
    return records_from_tree(tree["records"])


def _array(array: Array) -> dict[str, Any]:
    data = np.frombuffer(array.data, dtype=np.uint8)
    return {"dtype": array.dtype, "shape": list(array.shape), "stype": array.stype, "data": data}


def _from_array(fields: Mapping[str, Any]) -> Array:
    return Array(
        dtype=str(fields["dtype"]),
        shape=tuple(int(n) for n in fields["shape"]),
        stype=str(fields["stype"]),
        data=np.asarray(fields["data"], dtype=np.uint8).tobytes(),
    )


def _config_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {_BYTES: np.frombuffer(value, dtype=np.uint8)}
    if isinstance(value, list):
        return [_config_value(v) for v in value]
    return value


def _from_config_value(value: Any) -> Any:
    if isinstance(value, dict):
        return np.asarray(value[_BYTES], dtype=np.uint8).tobytes()
    if isinstance(value, list):
        return [_from_config_value(v) for v in value]
    return value
