"""A site's state on its disk: the round trip, the file's mode and atomic replacement, the
two rounds it keeps, and a state of another run, site or trial that is ignored."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedll.config.instruction import StateKey
from fedll.errors import ConfigError, DataError
from fedll.federation.flower_private import recorddict_to_wire
from fedll.federation.site_state import SiteStateStore, check_state_dir, site_state_dir

KEY = StateKey(trial="static__alternating__b1", fingerprint="0123456789abcdef0123", federation="77")


def state(value: float) -> RecordDict:
    """A site state of every record kind, its arrays set from ``value``."""
    return RecordDict(
        {
            "optimizer": ArrayRecord(
                {
                    "0/exp_avg": Array(np.full((2, 3), value, dtype=np.float32)),
                    "0/step": Array(np.array(value)),  # 0-d stays 0-d
                }
            ),
            "continual": ArrayRecord({"buffer": Array(np.array([0, 2], dtype=np.int64))}),
            "notes": ConfigRecord({"k": 3, "name": "x"}),
            "metrics": MetricRecord({"loss": value / 3}),
        }
    )


def assert_same(got: RecordDict, expected: RecordDict) -> None:
    assert list(got) == list(expected)
    for name, record in expected.items():
        if isinstance(record, ArrayRecord):
            assert list(got[name]) == list(record)
            for key, array in record.items():
                back = got[name][key].numpy()
                assert back.dtype == array.numpy().dtype and back.shape == array.numpy().shape
                np.testing.assert_array_equal(back, array.numpy())
        else:
            assert dict(got[name]) == dict(record)


def test_a_state_round_trips_exactly_into_a_private_file(tmp_path):
    store = SiteStateStore(tmp_path / "state", "hospital-t2")
    kept = state(0.1 + 0.2)
    path = store.save(KEY, 1, kept)

    assert path == tmp_path / "state" / f"{KEY.trial}.{KEY.fingerprint}.state"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    rnd, back = store.load(KEY, before_round=2)
    assert rnd == 1
    assert_same(back, kept)
    assert back["metrics"]["loss"] == (0.1 + 0.2) / 3  # floats exactly
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_the_file_holds_no_flower_wire_format_and_one_of_format_1_is_still_read(tmp_path):
    store = SiteStateStore(tmp_path / "state", "hospital-t2")
    kept = state(0.5)
    path = store.save(KEY, 1, kept)
    assert path.read_bytes()[:2] == b"PK"  # an .npz, not protobuf
    header = {
        "format": "fedll-site-state", "version": 1, "fedll": "0.9", "site": "hospital-t2",
        "trial": KEY.trial, "fingerprint": KEY.fingerprint, "federation": KEY.federation,
        "rounds": [1],
    }  # fmt: skip
    records = {"header": ConfigRecord(header), **{f"1/{n}": r for n, r in kept.items()}}
    path.write_bytes(recorddict_to_wire(RecordDict(records)))
    rnd, back = store.load(KEY, before_round=2)
    assert rnd == 1
    assert_same(back, kept)


def test_the_last_two_rounds_are_kept_and_a_reload_takes_one_before_the_round(tmp_path):
    store = SiteStateStore(tmp_path, "hospital-t2")
    for rnd in (1, 3, 5):
        store.save(KEY, rnd, state(rnd))
    assert store.load(KEY, before_round=6)[0] == 5
    # round 5 again (a server resumed from its checkpoint of round 4): the state before it
    rnd, back = store.load(KEY, before_round=5)
    assert rnd == 3
    assert_same(back, state(3))
    assert store.load(KEY, before_round=3) is None  # round 1's is gone: two are kept

    store.save(KEY, 5, state(50))  # round 5 run again replaces the first round 5
    assert_same(store.load(KEY, before_round=6)[1], state(50))
    store.save(KEY, 4, state(4))  # a later round kept is dropped (it is being run again)
    assert store.load(KEY, before_round=9)[0] == 4
    assert store.load(KEY, before_round=4)[0] == 3


def test_nothing_is_reloaded_from_a_round_not_before_the_one_asked(tmp_path, caplog):
    store = SiteStateStore(tmp_path, "hospital-t2")
    store.save(KEY, 2, state(2))
    with caplog.at_level(logging.INFO, logger="fedll.federation.site_state"):
        assert store.load(KEY, before_round=2) is None
    assert "holds rounds [2], none before round 2; ignored" in caplog.text


@pytest.mark.parametrize(
    ("other", "named"),
    [
        ({"federation": "78"}, "federation '77', not '78'"),  # a fresh run of the trial
        ({"fingerprint": "f" * 20}, "fingerprint"),  # the file copied under another name
        ({"trial": "other"}, "trial"),
    ],
)
def test_a_state_of_another_run_or_trial_is_ignored_and_logged(tmp_path, caplog, other, named):
    store = SiteStateStore(tmp_path, "hospital-t2")
    path = store.save(KEY, 1, state(1))
    key = KEY.model_copy(update=other)
    if store.path(key) != path:  # the name binds trial and fingerprint: copy it under the other
        store.path(key).write_bytes(path.read_bytes())
    with caplog.at_level(logging.WARNING, logger="fedll.federation.site_state"):
        assert store.load(key, before_round=2) is None
    assert named in caplog.text and "ignored" in caplog.text


def test_a_state_of_another_site_is_ignored(tmp_path, caplog):
    SiteStateStore(tmp_path, "hospital-t2").save(KEY, 1, state(1))
    with caplog.at_level(logging.WARNING, logger="fedll.federation.site_state"):
        assert SiteStateStore(tmp_path, "hospital-flair").load(KEY, before_round=2) is None
    assert "kept for site 'hospital-t2', not 'hospital-flair'" in caplog.text


def test_a_damaged_state_is_ignored_then_replaced(tmp_path, caplog):
    store = SiteStateStore(tmp_path, "hospital-t2")
    tmp_path.joinpath(store.path(KEY).name).write_bytes(b"\xffcut short")
    with caplog.at_level(logging.WARNING, logger="fedll.federation.site_state"):
        assert store.load(KEY, before_round=2) is None
    assert "not a fedll site state" in caplog.text
    store.save(KEY, 1, state(1))
    assert store.load(KEY, before_round=2)[0] == 1


def test_a_failed_write_leaves_the_kept_state_whole(tmp_path, monkeypatch):
    store = SiteStateStore(tmp_path, "hospital-t2")
    path = store.save(KEY, 1, state(1))
    before = path.read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DataError, match="site hospital-t2: cannot keep its state in .*No space"):
        store.save(KEY, 2, state(2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_where_a_site_keeps_its_state(tmp_path):
    data = {"site": "h", "modality": "t2", "data-dir": str(tmp_path / "data")}
    assert site_state_dir(data, {}, "h") == tmp_path / "data" / ".fedll-state"
    chosen = {**data, "state-dir": str(tmp_path / "elsewhere")}
    assert site_state_dir(chosen, {"run-dir": "/r"}, "h") == tmp_path / "elsewhere"
    simulated = {"partition-id": 0, "num-partitions": 2}
    assert site_state_dir(simulated, {"run-dir": "/r"}, "h") == Path("/r/site-state/h")
    assert site_state_dir(simulated, {"cohort-index": "/c.json"}, "h") is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_state_dir_that_cannot_be_written_is_named(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=f"--state-dir {locked}/s: {locked} is not writable"):
            check_state_dir(locked / "s", "--state-dir")
    finally:
        locked.chmod(0o700)


def test_a_state_dir_is_checked_not_created(tmp_path):
    assert check_state_dir(tmp_path / "a" / "b", "x") == (tmp_path / "a" / "b").resolve()
    assert not (tmp_path / "a").exists()  # checked, not created
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check_state_dir(tmp_path / "f" / "s", "x")
