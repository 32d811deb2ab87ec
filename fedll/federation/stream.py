"""Arrival streams: which site's patients arrive in which federated round.

Each site holds the training patients of one modality. Its patients, in the order given, are
cut into chunks of ``arrival_batch`` patients (the last chunk may be smaller); an ordering puts
all chunks into one sequence of arrivals, and ``arrivals_per_round`` consecutive arrivals form
one round (several sites training in the same federated round; under
``"alternating-rounds"`` a modality's last, short turn is a short round of its own).

Orderings:

- ``"alternating"``: the modalities take turns (T2, FLAIR, T2, ...); within a modality the
  sites take turns round-robin (first chunk of every site, then every second chunk, ...). When
  one modality runs out, the other's remaining chunks follow.
- ``"alternating-rounds"``: the modalities take turns round by round: a round takes
  ``arrivals_per_round`` chunks of one modality (its sites round-robin), the next round as
  many of the other. With two sites per modality and ``arrivals_per_round: 2`` both T2 sites
  train in one round and both FLAIR sites in the next (a lifelong federation); with
  ``arrivals_per_round: 1`` it is ``"alternating"``.
- ``"blocked"``: every chunk of the first modality (round-robin over its sites), then the next.
- ``"random"``: the chunks shuffled with ``seed`` (the only ordering that uses the seed).
- ``"alternating:flair"`` / ``"alternating-rounds:flair"`` / ``"blocked:flair"``: the suffix
  picks the first modality (default: the first of ``fedll.data.MODALITIES``, T2).
- a list of site names: each entry is the next chunk of that site. The list must use every
  chunk exactly once, so a stream never silently drops training data: to train on fewer
  patients, give the site fewer patients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from fedll.data import MODALITIES
from fedll.errors import ConfigError

T = TypeVar("T")

ORDERINGS: tuple[str, ...] = ("alternating", "alternating-rounds", "blocked", "random")


@dataclass(frozen=True)
class SiteHoldings:
    """A hospital's training patients, all of one modality, in arrival order."""

    name: str
    modality: str
    patients: tuple[str, ...]


@dataclass(frozen=True)
class Arrival:
    """Patients of one site that arrive (and train) in one round."""

    site: str
    modality: str
    patients: tuple[str, ...]


@dataclass(frozen=True)
class Round:
    """A federated round (``index`` from 1) and the arrivals that train in it."""

    index: int
    arrivals: tuple[Arrival, ...]

    @property
    def sites(self) -> tuple[str, ...]:
        """Names of the sites that train in this round, in arrival order."""
        return tuple(a.site for a in self.arrivals)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities arriving in this round, each once, in ``MODALITIES`` order."""
        present = {a.modality for a in self.arrivals}
        return tuple(m for m in MODALITIES if m in present)


def counted_holdings(sites: Sequence[tuple[str, str, int]]) -> list[SiteHoldings]:
    """Holdings from (name, modality, number of cases); case ``i`` of site ``s`` is ``"s/i"``.

    The server knows only how many cases each site holds (sites send counts, not case ids);
    the arrival stream then addresses a site's cases by position.
    """
    return [SiteHoldings(n, m, tuple(f"{n}/{i}" for i in range(count))) for n, m, count in sites]


def build_stream(
    sites: Sequence[SiteHoldings],
    ordering: str | Sequence[str],
    arrival_batch: int,
    seed: int,
    arrivals_per_round: int = 1,
) -> tuple[Round, ...]:
    """Cut each site's patients into chunks, order the chunks, and group them into rounds.

    Arrivals of the same site that fall into one round are merged into one ``Arrival`` (a site
    sends one update per round), so a round has at most ``arrivals_per_round`` arrivals.
    Raises ConfigError (one line) for an invalid ``sites``, ``ordering``, ``arrival_batch`` or
    ``arrivals_per_round``.
    """
    _check_positive("arrival_batch", arrival_batch)
    _check_positive("arrivals_per_round", arrivals_per_round)
    _check_sites(sites)
    chunks = {
        s.name: [
            Arrival(s.name, s.modality, s.patients[i : i + arrival_batch])
            for i in range(0, len(s.patients), arrival_batch)
        ]
        for s in sites
    }
    if isinstance(ordering, str):
        groups = _named_order(sites, chunks, ordering, seed, arrivals_per_round)
    else:
        groups = _consecutive(_listed_order(chunks, ordering, arrival_batch), arrivals_per_round)

    rounds = []
    for group in groups:
        merged: dict[str, Arrival] = {}
        for arrival in group:
            if arrival.site in merged:
                before = merged[arrival.site]
                arrival = Arrival(
                    arrival.site, arrival.modality, before.patients + arrival.patients
                )
            merged[arrival.site] = arrival
        rounds.append(Round(index=len(rounds) + 1, arrivals=tuple(merged.values())))
    return tuple(rounds)


def uses_seed(ordering: str | Sequence[str]) -> bool:
    """Whether the stream of ``ordering`` depends on the seed (only ``"random"``'s does)."""
    return ordering == "random"


def round_sites(
    sites: Sequence[SiteHoldings],
    ordering: str | Sequence[str],
    arrival_batch: int,
    seed: int,
    arrivals_per_round: int = 1,
) -> np.ndarray:
    """int (R, arrivals_per_round): the index into ``sites`` of each arrival of each of the R
    rounds of :func:`build_stream`'s stream, -1 past a round's last arrival.

    A site may stand twice in a round of the random ordering (the stream merges its arrivals
    into one). The random ordering is computed from the sites' chunk counts alone, without
    the stream's arrivals (milliseconds for 20,000 patients, where the stream takes some 70),
    so that a check over thousands of seeds stays fast; its arguments are taken as
    :func:`build_stream` accepts them (a scenario's rules check that first)."""
    if not uses_seed(ordering):
        index = {s.name: i for i, s in enumerate(sites)}
        stream = build_stream(sites, ordering, arrival_batch, seed, arrivals_per_round)
        rows = np.full((len(stream), arrivals_per_round), -1)
        for row, rnd in zip(rows, stream, strict=True):
            row[: len(rnd.arrivals)] = [index[a.site] for a in rnd.arrivals]
        return rows
    _check_positive("arrival_batch", arrival_batch)
    _check_positive("arrivals_per_round", arrivals_per_round)
    counts = [-(-len(s.patients) // arrival_batch) for s in sites]
    owners = np.repeat(np.arange(len(sites)), counts)[_random_order(sum(counts), seed)]
    padded = np.append(owners, np.full(-len(owners) % arrivals_per_round, -1))
    return padded.reshape(-1, arrivals_per_round)


def describe(stream: Sequence[Round]) -> list[str]:
    """One line per round for ``--dry-run``: ``round 2: site_b (flair, 2 patients)``."""
    lines = []
    for rnd in stream:
        parts = [f"{a.site} ({a.modality}, {len(a.patients)} patients)" for a in rnd.arrivals]
        lines.append(f"round {rnd.index}: " + ", ".join(parts))
    return lines


def _check_positive(key: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")


def _check_sites(sites: Sequence[SiteHoldings]) -> None:
    if not sites:
        raise ConfigError("sites: the stream needs at least one site")
    seen_sites: set[str] = set()
    seen_patients: dict[str, str] = {}
    for s in sites:
        if s.name in seen_sites:
            raise ConfigError(f"sites: site name {s.name!r} appears twice")
        seen_sites.add(s.name)
        if s.modality not in MODALITIES:
            raise ConfigError(
                f"sites: site {s.name!r} has modality {s.modality!r}, expected one of "
                + ", ".join(MODALITIES)
            )
        if not s.patients:
            raise ConfigError(f"sites: site {s.name!r} holds no training patients")
        for p in s.patients:
            if p in seen_patients:
                raise ConfigError(
                    f"sites: patient {p!r} is held twice (sites {seen_patients[p]!r}, {s.name!r})"
                )
            seen_patients[p] = s.name


def _random_order(chunks: int, seed: int) -> np.ndarray:
    """The random ordering's order of the ``chunks`` chunks of all sites (numbered site by
    site, in the order the sites are given, each site's chunks in arrival order)."""
    return np.random.default_rng(seed).permutation(chunks)


def _consecutive(order: Sequence[T], size: int) -> list[list[T]]:
    """``order`` cut into groups of ``size`` consecutive items (the last may be shorter)."""
    return [list(order[i : i + size]) for i in range(0, len(order), size)]


def _interleave(queues: Sequence[Sequence[T]]) -> list[T]:
    """Round-robin: the first item of every queue, then every second item, ...; empty skip."""
    longest = max((len(q) for q in queues), default=0)
    return [q[i] for i in range(longest) for q in queues if i < len(q)]


def _named_order(
    sites: Sequence[SiteHoldings],
    chunks: dict[str, list[Arrival]],
    ordering: str,
    seed: int,
    arrivals_per_round: int,
) -> list[list[Arrival]]:
    """The arrivals of a named ordering, grouped into rounds."""
    kind, _, first = ordering.partition(":")
    if kind not in ORDERINGS:
        raise ConfigError(
            f"ordering: unknown ordering {ordering!r}, expected one of {', '.join(ORDERINGS)} "
            "(optionally ':flair' or ':t2' after the alternating and blocked ones) or a list of "
            "site names"
        )
    if kind == "random":
        if first:
            raise ConfigError(f"ordering: {ordering!r}: 'random' takes no first modality")
        all_chunks = [c for s in sites for c in chunks[s.name]]
        shuffled = [all_chunks[i] for i in _random_order(len(all_chunks), seed)]
        return _consecutive(shuffled, arrivals_per_round)

    first = first or MODALITIES[0]
    present = [m for m in MODALITIES if any(s.modality == m for s in sites)]
    if first not in MODALITIES:
        raise ConfigError(
            f"ordering: {ordering!r}: unknown first modality {first!r}, expected one of "
            + ", ".join(MODALITIES)
        )
    if first not in present:
        raise ConfigError(f"ordering: {ordering!r} starts with {first} but no site holds {first}")
    modality_order = [first] + [m for m in present if m != first]
    per_modality = [
        _interleave([chunks[s.name] for s in sites if s.modality == m]) for m in modality_order
    ]
    if kind == "alternating-rounds":  # a round never mixes modalities
        return _interleave([_consecutive(seq, arrivals_per_round) for seq in per_modality])
    if kind == "alternating":
        return _consecutive(_interleave(per_modality), arrivals_per_round)
    return _consecutive([c for seq in per_modality for c in seq], arrivals_per_round)


def _listed_order(
    chunks: dict[str, list[Arrival]], ordering: Sequence[str], arrival_batch: int
) -> list[Arrival]:
    used = dict.fromkeys(chunks, 0)
    order = []
    for name in ordering:
        if name not in chunks:
            raise ConfigError(f"ordering: unknown site {name!r} (sites: {', '.join(chunks)})")
        if used[name] == len(chunks[name]):
            raise ConfigError(
                f"ordering: site {name!r} is listed more than its {len(chunks[name])} chunk(s) "
                f"of arrival_batch {arrival_batch}"
            )
        order.append(chunks[name][used[name]])
        used[name] += 1
    unused = [
        f"{name} x{len(chunks[name]) - n}" for name, n in used.items() if n < len(chunks[name])
    ]
    if unused:
        raise ConfigError(
            f"ordering: the list must use every chunk of arrival_batch {arrival_batch}; "
            f"missing {', '.join(unused)}"
        )
    return order
