"""The rules that relate a scenario's sections to each other, one small function each.

Each rule takes the parsed :class:`~fedll.config.schema.Scenario` and raises ``ValueError``
whose message starts with the key it is about; :data:`RULES` is the order they run in.
Checked once, at load time, so no trial discovers a bad stream or fault late.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from fedll.config.flower import flower_rule
from fedll.config.grid import (
    Trial,
    axis_product,
    axis_texts,
    exclude_entries,
    excluded,
    expand_trials,
    same,
)
from fedll.config.strategies import StrategyOptions
from fedll.data import MAX_PATIENTS
from fedll.errors import ConfigError
from fedll.federation.faults import lost_rounds
from fedll.federation.stream import build_stream, counted_holdings, round_sites, uses_seed
from fedll.models.registry import footprint

if TYPE_CHECKING:
    from fedll.config.schema import Scenario

logger = logging.getLogger(__name__)

MAX_TRIALS = 10_000
"""The largest grid (the axes' product, before ``exclude``): ten thousand trials are checked,
listed and fingerprinted in about a second; a typo (200,000 seeds) is refused, not a hang."""
TRIAL_ID_BYTES = 202
"""The longest trial id: the longest file name fedll builds around one, an atomic write of a
site's kept state, ``.<id>.<20-digit fingerprint>.state.<pid>.<12 hex digits>.tmp`` (a pid of up
to 7 digits), stays within the 255 bytes a file name may have."""
TRIAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""What a trial id may hold: it names files and folders."""


def grid_is_bounded(scenario: Scenario) -> None:
    """The grid has at most :data:`MAX_TRIALS` trials (checked first: the other rules walk it)."""
    axes = {
        "models": len(scenario.models),
        "stream.ordering": len(scenario.stream.ordering),
        "stream.arrival_batch": len(scenario.stream.arrival_batch),
        "stream.arrivals_per_round": len(scenario.stream.arrivals_per_round),
        "strategies": len(scenario.strategies),
        "cl": len(scenario.cl),
        "seeds": len(scenario.seeds),
    }
    trials = math.prod(axes.values())
    if trials > MAX_TRIALS:
        key = max(axes, key=lambda k: axes[k])
        product = " x ".join(f"{n} {k}" for k, n in axes.items())
        raise ValueError(
            f"{key}: {axes[key]} values make a grid of {trials} trials ({product}), more than "
            f"{MAX_TRIALS}"
        )


def training_patients_are_bounded(scenario: Scenario) -> None:
    """The sites hold at most :data:`fedll.data.MAX_PATIENTS` training patients together (each
    is bounded alone): a thousand sites of 20,000 would take GBs and minutes to stream."""
    total = sum(s.patients for s in scenario.sites)
    if total > MAX_PATIENTS:
        raise ValueError(
            f"sites: {total} training patients in all, more than {MAX_PATIENTS} (more than any "
            "public glioma cohort holds)"
        )


def unique_site_names(scenario: Scenario) -> None:
    names = [s.name for s in scenario.sites]
    if len(set(names)) != len(names):
        raise ValueError(f"sites: duplicate site name in {names}")


def enough_synthetic_patients(scenario: Scenario) -> None:
    synthetic = scenario.cohort.synthetic
    if synthetic is None or synthetic.patients is None:
        return
    test = 2 * scenario.test.patients_per_modality
    need = sum(s.patients for s in scenario.sites) + test
    if need > synthetic.patients:
        raise ValueError(
            f"cohort.synthetic.patients: {synthetic.patients} patients cannot cover the sites' "
            f"{need - test} training patients plus 2 x {scenario.test.patients_per_modality} "
            "test patients"
        )


def listed_orderings_name_sites(scenario: Scenario) -> None:
    names = {s.name for s in scenario.sites}
    for ordering in scenario.stream.ordering:
        if isinstance(ordering, list) and (unknown := sorted(set(ordering) - names)):
            raise ValueError(f"stream.ordering: unknown site(s) {unknown}")


def one_fault_per_known_site(scenario: Scenario) -> None:
    names = [s.name for s in scenario.sites]
    for index, fault in enumerate(scenario.faults):
        if fault.site not in names:
            raise ValueError(f"faults.{index}.site: unknown site {fault.site!r}")
        if fault.site in [f.site for f in scenario.faults[:index]]:
            raise ValueError(f"faults.{index}.site: site {fault.site!r} has a fault already")


def distinct_axis_values(scenario: Scenario) -> None:
    axes = (
        ("stream.ordering", [json.dumps(o) for o in scenario.stream.ordering]),
        ("stream.arrival_batch", scenario.stream.arrival_batch),
        ("stream.arrivals_per_round", scenario.stream.arrivals_per_round),
        ("strategies", [s.label for s in scenario.strategies]),
        ("cl", [c.label for c in scenario.cl]),
        ("seeds", scenario.seeds),
    )
    for key, values in axes:
        if len(set(values)) != len(values):
            raise ValueError(f"{key}: duplicate values in {values} (trial ids would clash)")


def streams_build(scenario: Scenario) -> None:
    """Every ordering x batch x arrivals-per-round makes a stream (sites declare counts)."""
    holdings = counted_holdings([(s.name, s.modality, s.patients) for s in scenario.sites])
    stream = scenario.stream
    for ordering, batch, per_round in itertools.product(
        stream.ordering, stream.arrival_batch, stream.arrivals_per_round
    ):
        try:
            build_stream(holdings, ordering, batch, 0, per_round)
        except ConfigError as error:
            raise ValueError(f"stream.{error}") from None


def exclude_entries_fit(scenario: Scenario) -> None:
    """Each ``exclude`` entry names known axes; together they leave at least one trial.

    A value that is not on its axis only warns: ``--set`` may narrow an axis that an entry
    names (``--set strategies=[fedavg]`` with an entry for ``dynamic-aware``)."""
    grid = [axis_texts(t) for t in axis_product(scenario)]
    axes = list(grid[0])
    held = {axis: list(dict.fromkeys(texts[axis] for texts in grid)) for axis in axes}
    for index, entry in enumerate(scenario.exclude):
        if not entry:
            raise ValueError(f"exclude.{index}: an empty entry would exclude every trial")
        for key, wanted in entry.items():
            if key not in axes:
                raise ValueError(f"exclude.{index}.{key}: unknown axis (axes: {', '.join(axes)})")
            if not any(same(v, wanted) for v in held[key]):
                logger.warning(
                    "exclude.%d.%s: %r is not a value of the grid (%s); the entry excludes nothing",
                    index,
                    key,
                    wanted,
                    ", ".join(held[key]),
                )
    entries = exclude_entries(scenario)
    if all(excluded(texts, entries) for texts in grid):
        raise ValueError("exclude: every trial of the grid is excluded")


def models_fit_in_memory(scenario: Scenario) -> None:
    """Each model's parameters and the activations of one training batch, measured on the
    meta device before any tensor exists, stay within ``execution``'s bounds (a typo such as
    ``depth: 12`` is refused here, not by a MemoryError or a hang in a trial)."""
    limits = scenario.execution
    batch, size = scenario.training.batch_size, scenario.slices.size
    for key, model in scenario.models.items():
        parameters, activations = footprint(model.name, model.kwargs(), batch, size)
        if parameters > limits.max_parameters:
            raise ValueError(
                f"models.{key}: {parameters:.3g} parameters exceed execution.max_parameters "
                f"({limits.max_parameters:.3g})"
            )
        if activations > limits.max_activation_gb * 2**30:
            raise ValueError(
                f"models.{key}: a training batch of {batch} slices of {size} px needs about "
                f"{activations / 2**30:.3g} GiB of activations, over execution.max_activation_gb "
                f"({limits.max_activation_gb:g})"
            )


def adaptive_dp_noise_fits(scenario: Scenario) -> None:
    """Adaptive clipping's noise multiplier stays below twice the noise on the clipped count
    (Flower's condition; that noise defaults to the number of sites / 20)."""
    for index, strategy in enumerate(scenario.strategies):
        dp = strategy.dp
        if dp is None or dp.clipping != "adaptive" or dp.noise_multiplier == 0:
            continue
        stddev = dp.clipped_count_stddev
        stddev = len(scenario.sites) / 20 if stddev is None else stddev
        if dp.noise_multiplier >= 2 * stddev:
            raise ValueError(
                f"strategies.{index}.dp.noise_multiplier: {dp.noise_multiplier:g} must be below "
                f"2 x clipped_count_stddev ({stddev:g}"
                + (f", {len(scenario.sites)} sites / 20" if dp.clipped_count_stddev is None else "")
                + "); raise clipped_count_stddev"
            )


def trial_ids_name_files(scenario: Scenario) -> None:
    """Every trial id is a file name fedll can use: letters, digits, ``.``, ``_`` and ``-``
    (a strategy's string option is part of its label) and at most :data:`TRIAL_ID_BYTES`
    bytes (a 100-character model key with a long strategy label is more). The message names
    the key whose part of the id is the longest (or holds the bad character)."""
    for trial in expand_trials(scenario):
        trial_id = trial.trial_id
        safe = TRIAL_ID.fullmatch(trial_id) is not None
        if safe and len(trial_id.encode()) <= TRIAL_ID_BYTES:
            continue
        parts = _id_parts(scenario, trial)
        if not safe:
            unsafe = ((k, p) for k, p in parts.items() if not TRIAL_ID.fullmatch(p))
            key, part = next(unsafe, ("stream.ordering", trial_id))
            raise ValueError(
                f"{key}: {part!r} is part of trial ids, which name files: it may hold only "
                "letters, digits, '.', '_' and '-'"
            )
        key = max(parts, key=lambda k: len(parts[k]))
        raise ValueError(
            f"{key}: the trial id {trial_id[:40]!r}... is {len(trial_id.encode())} bytes, "
            f"over the {TRIAL_ID_BYTES} that its files' names allow (a file name has at most "
            f"255 bytes); its longest part is {key}'s {len(parts[key])} characters: shorten it"
        )


def _id_parts(scenario: Scenario, trial: Trial) -> dict[str, str]:
    """The key of each scenario value in ``trial``'s id, and its text there."""
    parts = {f"models.{trial.model}": trial.model}
    if trial.strategy is not None:
        parts[f"strategies.{scenario.strategies.index(trial.strategy)}"] = trial.strategy_label
    if trial.kind == "stream":
        parts[f"cl.{scenario.cl.index(trial.cl)}"] = trial.cl_label
    return parts


BYZANTINE_RULES = ("Krum", "MultiKrum", "Bulyan")
"""Flower's rules that assume at most ``num_malicious_nodes`` Byzantine updates in a round."""


def byzantine_rules_get_their_replies(scenario: Scenario) -> None:
    """Krum, Multi-Krum and Bulyan hold in every round of every trial that uses them.

    A round's replies are the sites that train in it (at most ``arrivals_per_round``: a site
    arriving twice in a round sends one update) less those whose fault loses their update
    (:func:`fedll.federation.faults.lost_rounds`). Flower's Bulyan keeps the model in a round of
    fewer than 4f + 3 replies; Krum's guarantee (Blanchard et al. 2017) needs more than 2f + 2 (with
    fewer, Flower's Krum still picks one update, scored by fewer neighbours than its n - f - 2,
    down to an arbitrary one of two); Multi-Krum cannot select more updates than a round has
    (Flower then averages them all). Either would be no robust rule at all, silently.

    Each stream (ordering, batch, arrivals per round and, for a random ordering, seed) is
    counted once, for the rules its trials use, and not kept: 10,000 seeds of a random
    ordering of 20,000 patients cost seconds and a few MB."""
    byzantine = {
        index: options
        for index, options in enumerate(scenario.strategies)
        if (rule := flower_rule(options)) is not None and rule.cls in BYZANTINE_RULES
    }
    if not byzantine:
        return
    entries = exclude_entries(scenario)
    used: dict[tuple[int, int, int, int], list[int]] = {}  # stream -> strategies, grid order
    for trial in axis_product(scenario):
        index = scenario.strategies.index(trial.strategy)
        if index not in byzantine or excluded(axis_texts(trial), entries):
            continue
        stream = (
            scenario.stream.ordering.index(trial.ordering),
            trial.arrival_batch,
            trial.arrivals_per_round,
            trial.seed if uses_seed(trial.ordering) else 0,
        )
        strategies = used.setdefault(stream, [])
        if index not in strategies:
            strategies.append(index)
    holdings = counted_holdings([(s.name, s.modality, s.patients) for s in scenario.sites])
    sites = {s.name: i for i, s in enumerate(scenario.sites)}
    lost: tuple[tuple[int, int, int], np.ndarray | None] | None = None  # the last shape's
    for (ordering, batch, per_round, seed), strategies in used.items():
        rows = round_sites(holdings, scenario.stream.ordering[ordering], batch, seed, per_round)
        if lost is None or lost[0] != (ordering, batch, per_round):
            lost = ((ordering, batch, per_round), _lost(scenario, sites, len(rows)))
        replies = _replies(rows, lost[1])
        where = _stream_text(scenario, ordering, batch, per_round, seed)
        for index in strategies:
            _check_replies(f"strategies.{index}", byzantine[index], replies, where)


def _lost(scenario: Scenario, sites: dict[str, int], rounds: int) -> np.ndarray | None:
    """bool (rounds, sites): whose update each round loses, None without faults."""
    if not scenario.faults:
        return None
    lost = np.zeros((rounds, len(sites)), dtype=bool)
    for fault in scenario.faults:
        lost[:, sites[fault.site]] = lost_rounds(fault, rounds)
    return lost


def _replies(rows: np.ndarray, lost: np.ndarray | None) -> np.ndarray:
    """int (R,): the replies of each round of :func:`fedll.federation.stream.round_sites` ``rows``:
    its distinct sites, less those whose update ``lost`` (:func:`_lost`) says the round loses."""
    rows = rows.copy()
    if lost is not None:
        rounds = np.arange(len(rows))[:, None]
        rows[(rows >= 0) & lost[rounds, np.maximum(rows, 0)]] = -1
    rows.sort(axis=1)
    first = np.ones_like(rows, dtype=bool)
    first[:, 1:] = rows[:, 1:] != rows[:, :-1]
    return (first & (rows >= 0)).sum(axis=1)


def _stream_text(scenario: Scenario, ordering: int, batch: int, per_round: int, seed: int) -> str:
    """A stream as a message names it: ``ordering alternating, arrival_batch 1, ...``."""
    named = scenario.stream.ordering[ordering]
    text = named if isinstance(named, str) else f"stream.ordering.{ordering} (a list)"
    seeded = f", seed {seed}" if uses_seed(named) else ""
    return f"ordering {text}, arrival_batch {batch}, arrivals_per_round {per_round}{seeded}"


def _check_replies(key: str, options: StrategyOptions, replies: np.ndarray, stream: str) -> None:
    """ValueError unless each round's ``replies`` are as many as ``options``' rule needs."""
    chosen = options.options()
    f, select = chosen["num_malicious_nodes"], chosen.get("num_nodes_to_select", 1)
    if options.name == "bulyan":
        need, why = 4 * f + 3, "4f + 3; with fewer, Flower's Bulyan keeps the model"
    else:
        need, why = 2 * f + 3, "more than 2f + 2, Krum's condition"
    low, high = int(replies.min()), int(replies.max())
    span = f"{low}" if low == high else f"{low} to {high}"
    short = np.flatnonzero(replies < max(need, select))
    if not len(short):
        return
    number, n = int(short[0]) + 1, int(replies[short[0]])
    if n < need:
        raise ValueError(
            f"{key}.num_malicious_nodes: {options.name} with num_malicious_nodes {f} needs "
            f"at least {need} replies in a round ({why}), but round {number} of the stream "
            f"({stream}) has {n} (its rounds have {span}); raise stream.arrivals_per_round "
            "or lower num_malicious_nodes"
        )
    raise ValueError(
        f"{key}.num_nodes_to_select: {select} updates cannot be selected from the {n} "
        f"replies of round {number} of the stream ({stream}; its rounds have {span})"
    )


RULES: tuple[Callable[[Scenario], None], ...] = (
    grid_is_bounded,
    training_patients_are_bounded,
    unique_site_names,
    enough_synthetic_patients,
    listed_orderings_name_sites,
    one_fault_per_known_site,
    distinct_axis_values,
    streams_build,
    exclude_entries_fit,
    models_fit_in_memory,
    adaptive_dp_noise_fits,
    trial_ids_name_files,
    byzantine_rules_get_their_replies,
)
