"""Flower records as plain data: every record kind and config value type comes back as it
was, in its order, each Array byte for byte, without Flower's wire format; an earlier fedll's
bytes in Flower's wire format are still read."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedll.federation.flower_private import recorddict_to_wire
from fedll.federation.records import pack, records_from_bytes, records_to_bytes, unpack


def every_kind() -> RecordDict:
    return RecordDict(
        {
            "z-model": ArrayRecord(
                {
                    "b": Array(torch.arange(6, dtype=torch.float32).reshape(2, 3)),
                    "a": Array(np.array(7, dtype=np.int64)),  # 0-d, after "b"
                    "h": Array(np.ones(3, dtype=np.float16)),
                    "m": Array(np.array([True, False])),
                }
            ),
            "config": ConfigRecord(
                {
                    "s": "x",
                    "i": 3,
                    "f": 3.0,
                    "nan": float("nan"),
                    "t": True,
                    "raw": b"\x00\xff",
                    "ints": [1, 2],
                    "floats": [0.5],
                    "words": ["a", "b"],
                    "blobs": [b"", b"q"],
                }
            ),  # fmt: skip
            "metrics": MetricRecord({"loss": 0.1 + 0.2, "n": 4, "curve": [1.0, 2.5]}),
        }
    )


def assert_identical(got: RecordDict, expected: RecordDict) -> None:
    assert list(got) == list(expected)
    for name, record in expected.items():
        assert type(got[name]) is type(record) and list(got[name]) == list(record)
        for key, value in record.items():
            back = got[name][key]
            if isinstance(value, Array):
                assert (back.dtype, back.shape, back.stype) == (
                    value.dtype,
                    value.shape,
                    value.stype,
                )
                assert back.data == value.data
            elif isinstance(value, float) and np.isnan(value):
                assert isinstance(back, float) and np.isnan(back)
            else:
                assert back == value and type(back) is type(value), key
                if isinstance(value, list):
                    assert [type(v) for v in back] == [type(v) for v in value]


def test_records_round_trip_byte_for_byte_in_their_order():
    records = every_kind()
    data = records_to_bytes(records)
    assert zipfile.is_zipfile(io.BytesIO(data))
    assert_identical(records_from_bytes(data), records)


def test_an_earlier_fedlls_wire_format_is_still_read():
    records = every_kind()
    assert_identical(records_from_bytes(recorddict_to_wire(records)), records)


def test_a_tree_keeps_arrays_and_json_values_exactly():
    tree = {"w": np.arange(3, dtype=np.float32), "rows": [{"dice": 0.1 + 0.2}], "n": np.int64(4)}
    back = unpack(pack(tree))
    assert back["w"].dtype == np.float32 and np.array_equal(back["w"], tree["w"])
    assert back["rows"] == [{"dice": 0.1 + 0.2}] and back["n"] == 4


@pytest.mark.parametrize("data", [b"\xff\xff", pack({"other": 1})])
def test_bytes_that_are_no_records_are_a_value_error(data):
    with pytest.raises(ValueError):
        records_from_bytes(data)
