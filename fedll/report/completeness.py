"""Whether results hold everything their scenario asks for: every trial, every round, every
test case (pure pandas, no scenario types: the caller says what is expected).

``fedll report`` refuses results that lack any of it (a partial table read as a complete one
is a wrong result), or that hold a trial the scenario does not have; with ``--partial`` it
reports the configurations whose every trial is complete and lists the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from fedll.results.columns import config_columns

NO_ROWS = "no rows"
"""What :func:`missing_parts` says of a trial without a single row: it was not run (or did
not finish: a trial's rows are written all at once, when it ends)."""


@dataclass(frozen=True)
class Expected:
    """What complete results hold: ``rounds`` maps each trial id to its number of rounds T
    (rows for rounds 0..T) and ``cases`` each modality to its test cases (every round of
    every trial is evaluated on all of them; empty: not checked)."""

    rounds: Mapping[str, int]
    cases: Mapping[str, Sequence[str]] = field(default_factory=dict)


def missing_parts(results: pd.DataFrame, expected: Expected) -> dict[str, str]:
    """trial id -> what its rows lack ("no rows", "rounds 3, 4", "t2 cases a, b in round
    2"), for every incomplete trial of ``expected`` (checked results)."""
    missing: dict[str, str] = {}
    by_trial = dict(tuple(results.groupby("trial", sort=False)))
    for trial, rounds in expected.rounds.items():
        frame = by_trial.get(trial)
        if frame is None:
            missing[trial] = NO_ROWS
            continue
        absent = sorted(set(range(rounds + 1)) - set(frame["round"]))
        if absent:
            missing[trial] = "rounds " + ", ".join(map(str, absent))
            continue
        for (rnd, modality), cases in frame.groupby(["round", "modality"])["case"]:
            lacking = sorted(set(expected.cases.get(modality, ())) - set(cases.astype(str)))
            if lacking:
                missing[trial] = f"{modality} cases {', '.join(lacking)} in round {rnd}"
                break
        else:
            held = set(frame["modality"])
            if lacking_modalities := sorted(m for m in expected.cases if m not in held):
                missing[trial] = "modality " + ", ".join(lacking_modalities)
    return missing


def foreign_trials(trials: Iterable[str], expected: Expected) -> list[str]:
    """The trial ids among ``trials`` (a file's ``trial`` column) that ``expected`` does not
    name, in order of appearance: rows of another scenario's run, copied or edited in."""
    return [t for t in dict.fromkeys(map(str, trials)) if t not in expected.rounds]


def complete_configurations(
    results: pd.DataFrame, missing: Mapping[str, str], expected: Expected
) -> tuple[pd.DataFrame, list[str]]:
    """The rows of configurations whose every expected trial is complete, and the trial ids
    left out (incomplete, or in a configuration with an incomplete trial)."""
    keys = config_columns(results)
    trials = results.drop_duplicates("trial").set_index("trial")[keys]
    bad_configs = {tuple(trials.loc[t]) for t in missing if t in trials.index}
    keep = [
        t
        for t in trials.index
        if t in expected.rounds and t not in missing and tuple(trials.loc[t]) not in bad_configs
    ]
    left_out = [t for t in expected.rounds if t not in keep]
    return results[results["trial"].isin(keep)], left_out


def describe(missing: Mapping[str, str], shown: int = 3) -> str:
    """One line: how many trials were not run (no rows at all) and how many lack part of their
    rows, and what, naming the first few of each."""
    not_run = [trial for trial, what in missing.items() if what == NO_ROWS]
    partial = [f"{trial} ({what})" for trial, what in missing.items() if what != NO_ROWS]
    parts = []
    if not_run:
        parts.append(f"{len(not_run)} trial(s) not run: " + _first(not_run, shown))
    if partial:
        parts.append(f"{len(partial)} trial(s) incomplete: " + _first(partial, shown))
    return "; ".join(parts)


def _first(items: Sequence[str], shown: int) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
