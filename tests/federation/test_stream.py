"""Arrival streams built by hand: 2 T2 sites + 1 FLAIR site, arrival batch 2."""

from __future__ import annotations

import numpy as np
import pytest

from fedll.errors import ConfigError
from fedll.federation.stream import (
    Arrival,
    Round,
    SiteHoldings,
    build_stream,
    describe,
    round_sites,
)

SITES = (
    SiteHoldings("A", "t2", ("a1", "a2", "a3")),
    SiteHoldings("B", "t2", ("b1", "b2", "b3", "b4")),
    SiteHoldings("C", "flair", ("c1", "c2", "c3", "c4", "c5")),
)
# chunks of 2: A0 = a1 a2, A1 = a3; B0 = b1 b2, B1 = b3 b4; C0 = c1 c2, C1 = c3 c4, C2 = c5
A0, A1 = Arrival("A", "t2", ("a1", "a2")), Arrival("A", "t2", ("a3",))
B0, B1 = Arrival("B", "t2", ("b1", "b2")), Arrival("B", "t2", ("b3", "b4"))
C0, C1, C2 = (
    Arrival("C", "flair", ("c1", "c2")),
    Arrival("C", "flair", ("c3", "c4")),
    Arrival("C", "flair", ("c5",)),
)


def arrivals(stream: tuple[Round, ...]) -> list[Arrival]:
    assert [r.index for r in stream] == list(range(1, len(stream) + 1))
    assert all(len(r.arrivals) == 1 for r in stream)
    return [r.arrivals[0] for r in stream]


@pytest.mark.parametrize(
    ("ordering", "expected"),
    [
        # t2 round-robin A0 B0 A1 B1, flair C0 C1 C2; modalities take turns, t2 runs out last
        ("alternating", [A0, C0, B0, C1, A1, C2, B1]),
        ("alternating:t2", [A0, C0, B0, C1, A1, C2, B1]),
        ("alternating:flair", [C0, A0, C1, B0, C2, A1, B1]),
        ("alternating-rounds", [A0, C0, B0, C1, A1, C2, B1]),  # one per round: alternating
        ("blocked", [A0, B0, A1, B1, C0, C1, C2]),
        ("blocked:flair", [C0, C1, C2, A0, B0, A1, B1]),
        (["C", "A", "A", "B", "C", "B", "C"], [C0, A0, A1, B0, C1, B1, C2]),
    ],
)
def test_orderings_by_hand(ordering: str | list[str], expected: list[Arrival]) -> None:
    assert arrivals(build_stream(SITES, ordering, arrival_batch=2, seed=0)) == expected


def test_random_is_a_seeded_permutation_of_the_chunks() -> None:
    first = arrivals(build_stream(SITES, "random", 2, seed=3))
    assert first == arrivals(build_stream(SITES, "random", 2, seed=3))
    assert sorted(first, key=repr) == sorted([A0, A1, B0, B1, C0, C1, C2], key=repr)
    others = {tuple(arrivals(build_stream(SITES, "random", 2, seed=s))) for s in range(5)}
    assert len(others) > 1


def test_batch_larger_than_site_and_batch_one() -> None:
    whole = arrivals(build_stream(SITES, "blocked", arrival_batch=10, seed=0))
    assert [a.patients for a in whole] == [SITES[0].patients, SITES[1].patients, SITES[2].patients]
    single = build_stream(SITES, "alternating", arrival_batch=1, seed=0)
    assert len(single) == 12
    assert [a.patients[0] for a in arrivals(single)][:4] == ["a1", "c1", "b1", "c2"]


def test_arrivals_per_round_groups_consecutive_arrivals() -> None:
    stream = build_stream(SITES, "alternating", 2, seed=0, arrivals_per_round=2)
    # A0 C0 | B0 C1 | A1 C2 | B1
    assert [r.arrivals for r in stream] == [(A0, C0), (B0, C1), (A1, C2), (B1,)]
    assert stream[0].sites == ("A", "C")
    assert stream[0].modalities == ("t2", "flair")
    assert stream[3].modalities == ("t2",)


def test_alternating_rounds_never_mixes_modalities_in_a_round() -> None:
    stream = build_stream(SITES, "alternating-rounds", 2, seed=0, arrivals_per_round=2)
    # t2 turns (A0 B0) (A1 B1), flair turns (C0 C1) (C2): a short turn is a short round
    c01 = Arrival("C", "flair", ("c1", "c2", "c3", "c4"))  # one site sends one update a round
    assert [r.arrivals for r in stream] == [(A0, B0), (c01,), (A1, B1), (C2,)]
    assert [r.modalities for r in stream] == [("t2",), ("flair",), ("t2",), ("flair",)]
    first_flair = build_stream(SITES, "alternating-rounds:flair", 2, 0, arrivals_per_round=3)
    # flair's one turn (C0 C1 C2) is one arrival of C; t2's turns are (A0 B0 A1) and (B1)
    assert [r.arrivals for r in first_flair] == [
        (Arrival("C", "flair", ("c1", "c2", "c3", "c4", "c5")),),
        (Arrival("A", "t2", ("a1", "a2", "a3")), B0),
        (B1,),
    ]


def test_same_site_in_one_round_is_merged() -> None:
    stream = build_stream(SITES, "blocked", 2, seed=0, arrivals_per_round=2)
    # A0 B0 | A1 B1 | C0 C1 -> one arrival of C with c1..c4 | C2
    assert [r.arrivals for r in stream] == [
        (A0, B0),
        (A1, B1),
        (Arrival("C", "flair", ("c1", "c2", "c3", "c4")),),
        (C2,),
    ]


def test_round_sites_by_hand() -> None:
    # alternating, 2 per round: A0 C0 | B0 C1 | A1 C2 | B1; blocked: C0 C1 merged into one
    rows = round_sites(SITES, "alternating", 2, seed=0, arrivals_per_round=2)
    np.testing.assert_array_equal(rows, [[0, 2], [1, 2], [0, 2], [1, -1]])
    rows = round_sites(SITES, "blocked", 2, seed=0, arrivals_per_round=2)
    np.testing.assert_array_equal(rows, [[0, 1], [0, 1], [2, -1], [2, -1]])


@pytest.mark.parametrize("ordering", ["random", "alternating-rounds:flair", ["C", "A", "A", "B",
                                      "C", "B", "C"]])  # fmt: skip
@pytest.mark.parametrize(("batch", "per_round"), [(1, 1), (2, 2), (1, 3), (2, 4), (3, 7)])
def test_round_sites_are_the_sites_of_the_stream_s_rounds(ordering, batch, per_round) -> None:
    """The random ordering, computed apart from the stream, gives each round's sites as the
    stream has them, over 50 seeds (a site standing twice where the stream merged it)."""
    if isinstance(ordering, list) and batch != 2:
        ordering = [s.name for s in SITES for _ in range(-(-len(s.patients) // batch))]
    for seed in range(50):
        stream = build_stream(SITES, ordering, batch, seed, per_round)
        rows = round_sites(SITES, ordering, batch, seed, per_round)
        assert rows.shape == (len(stream), per_round)
        names = [[SITES[i].name for i in dict.fromkeys(row) if i >= 0] for row in rows]
        assert names == [list(r.sites) for r in stream]


def test_describe() -> None:
    lines = describe(build_stream(SITES, "alternating", 2, seed=0, arrivals_per_round=2))
    assert lines[0] == "round 1: A (t2, 2 patients), C (flair, 2 patients)"
    assert lines[-1] == "round 4: B (t2, 2 patients)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arrival_batch": 0}, "arrival_batch must be an integer >= 1"),
        ({"arrival_batch": 1.5}, "arrival_batch"),
        ({"arrivals_per_round": 0}, "arrivals_per_round"),
        ({"ordering": "zigzag"}, "unknown ordering 'zigzag'"),
        ({"ordering": "random:flair"}, "takes no first modality"),
        ({"ordering": "blocked:t1"}, "unknown first modality 't1'"),
        ({"ordering": ["A", "D"]}, "unknown site 'D'"),
        ({"ordering": ["A", "A", "A"]}, "site 'A' is listed more than its 2 chunk"),
        ({"ordering": ["A", "A", "B", "B", "C"]}, "missing C x2"),
        ({"sites": ()}, "at least one site"),
        ({"sites": (SITES[0], SITES[0])}, "appears twice"),
        ({"sites": (SiteHoldings("X", "t1", ("x",)),)}, "modality 't1'"),
        ({"sites": (SiteHoldings("X", "t2", ()),)}, "no training patients"),
        ({"sites": (SITES[0], SiteHoldings("X", "flair", ("a1",)))}, "patient 'a1'"),
        ({"sites": SITES[:2], "ordering": "blocked:flair"}, "no site holds flair"),
    ],
)
def test_errors_are_one_line(kwargs: dict, message: str) -> None:
    args = {"sites": SITES, "ordering": "alternating", "arrival_batch": 2, "seed": 0} | kwargs
    with pytest.raises(ConfigError, match=message) as info:
        build_stream(**args)
    assert "\n" not in str(info.value)
