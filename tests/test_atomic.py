"""Atomic writes: the whole file or the old one, never a half-written file or a stray temp."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedll.atomic import atomic_path


def test_the_block_replaces_the_file_when_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("old")
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp != path
        tmp.write_text("new")
        assert path.read_text() == "old"  # readers see the old file until the block ends
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_a_failing_block_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_concurrent_writers_get_distinct_temps(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    with atomic_path(path) as first, atomic_path(path) as second:
        assert first != second
        first.write_text("a")
        second.write_text("b")
    assert path.read_text() == "a"  # the outer block ends last and wins
