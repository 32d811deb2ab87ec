"""Are two runs of the same scenarios equivalent? The check that re-baselines an arithmetic change.

A change of arithmetic (another kernel, device, library or summation order) changes every
trial's numbers; it is allowed once every shipped scenario whose tables the docs or a study
quote is rerun, the new tables committed, and the new run shown equivalent to the old one:

    .venv/bin/python benchmarks/equivalence.py OLD NEW            # run directories
    .venv/bin/python benchmarks/equivalence.py OLD NEW --csv equivalence.csv --margin 0.03

OLD and NEW are run directories (their ``results.csv`` or ``results.csv.gz``) or results
files. Their trials are paired by trial id (the same configuration and seed) and their test
cases by name; every trial of OLD must be in NEW (NEW's extra trials are left out, with a
note). For every configuration x evaluated modality x measure of :data:`MEASURES`, the paired
difference NEW - OLD is the mean over seeds of the per-seed difference with the 95% interval
of ``fedll report --compare`` (:func:`fedll.report.compare.paired_difference`, seed and
case parts: :mod:`fedll.report.intervals`). A row is **equivalent** when its interval
contains 0 or lies within +-``margin`` (0.03 Dice), else it **differs**; a measure that is
undefined in both runs (learning accuracy of a modality that never trains) is equivalent, one
defined in one run only differs.

Prints the table and a last line with the count; exits 0 when every row is equivalent, 1
when any differs, 2 (one line on stderr) for bad input. Each row's interval has 95%
coverage on its own, so among many rows of two runs of equal expectation an interval wider
than the margin excludes 0 about once in 20: a lone "differs" among hundreds of rows says
to rerun that configuration with more seeds before reading it as a change.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fedll.data import MODALITIES
from fedll.errors import DataError, FedllError
from fedll.report.compare import ArmTrial, paired_difference, trial_cases
from fedll.report.read import maybe_compressed, read_results
from fedll.report.summary import measures, trial_summary
from fedll.report.tables import to_markdown
from fedll.results.columns import config_columns

logger = logging.getLogger("equivalence")

MEASURES = ("final_dice", "forgetting_max", "learning_accuracy")
MARGIN = 0.03
"""The equivalence margin in Dice: a difference whose interval lies within +-MARGIN is
equivalent even where the interval excludes 0."""
COLUMNS = (
    "modality", "measure", "label", "difference", "ci_low", "ci_high", "n_seeds", "n_cases",
    "verdict", "why",
)  # fmt: skip


def read_run(path: Path) -> pd.DataFrame:
    """The checked results of a run directory (``results.csv[.gz]``) or of a results file;
    DataError (one line naming the path) where there are none."""
    path = Path(path)
    source = maybe_compressed(path / "results.csv") if path.is_dir() else path
    if not source.is_file():
        raise DataError(f"{path}: no results.csv (a run directory or a results file)")
    return read_results(source)


def equivalence(
    old: pd.DataFrame, new: pd.DataFrame, margin: float = MARGIN, level: float = 0.95
) -> pd.DataFrame:
    """One row per configuration x evaluated modality x measure of :data:`MEASURES`: the
    configuration's columns, then :data:`COLUMNS` (``difference`` NEW - OLD, its interval,
    ``verdict`` ``equivalent`` or ``differs`` and ``why``).

    DataError when a trial of OLD is missing from NEW, a paired trial's configuration or seed
    differs, or its test cases do not match."""
    keys = [c for c in config_columns(old) if c in set(config_columns(new))]
    missing = sorted(set(old["trial"]) - set(new["trial"]))
    if missing:
        raise DataError(f"NEW lacks {len(missing)} trial(s) of OLD (first: {missing[0]})")
    extra = sorted(set(new["trial"]) - set(old["trial"]))
    if extra:
        logger.warning("NEW has %d trial(s) that OLD lacks, left out: %s", len(extra), extra[0])
        new = new[new["trial"].isin(set(old["trial"]))]
    first = {
        n: f.drop_duplicates("trial").set_index("trial") for n, f in (("old", old), ("new", new))
    }
    differ = first["old"][[*keys, "seed"]] != first["new"].loc[first["old"].index, [*keys, "seed"]]
    if differ.any(axis=None):
        trial = differ.index[differ.any(axis=1)][0]
        raise DataError(f"trial {trial}: OLD and NEW differ in configuration or seed")
    old_cases = {t: trial_cases(f) for t, f in old.groupby("trial", sort=False)}
    new_cases = {t: trial_cases(f) for t, f in new.groupby("trial", sort=False)}
    for trial, cases in old_cases.items():
        if cases.case_ids != new_cases[trial].case_ids:
            raise DataError(f"trial {trial}: OLD and NEW were not scored on the same test cases")
    defined = _defined(old, keys), _defined(new, keys)
    names = list(measures())
    labels = measures()
    rows = []
    for key, trials in first["old"].reset_index().groupby(keys, sort=False, dropna=False):
        trials = trials.sort_values("seed")["trial"].tolist()
        before: list[ArmTrial] = [old_cases[t] for t in trials]
        after: list[ArmTrial] = [new_cases[t] for t in trials]
        estimate, low, high = paired_difference(after, before, level=level)
        key = key if isinstance(key, tuple) else (key,)
        for m, modality in enumerate(MODALITIES):
            if before[0].cases[m] is None:
                continue
            for measure in MEASURES:
                i = names.index(measure)
                state = (
                    defined[0].get((*key, modality, measure)),
                    defined[1].get((*key, modality, measure)),
                )
                verdict, why = _verdict(estimate[i, m], low[i, m], high[i, m], state, margin)
                rows.append(
                    {
                        **dict(zip(keys, key, strict=True)),
                        "modality": modality,
                        "measure": measure,
                        "label": labels[measure],
                        "difference": estimate[i, m],
                        "ci_low": low[i, m],
                        "ci_high": high[i, m],
                        "n_seeds": len(trials),
                        "n_cases": len(before[0].case_ids[m]),
                        "verdict": verdict,
                        "why": why,
                    }
                )
    return pd.DataFrame(rows, columns=[*keys, *COLUMNS])


def _defined(results: pd.DataFrame, keys: list[str]) -> dict[tuple, tuple[bool, ...]]:
    """(configuration..., modality, measure) -> per seed (in seed order), whether the trial
    has the measure (not NaN)."""
    summary = trial_summary(results).sort_values("seed", kind="stable")
    out = {}
    for key, group in summary.groupby([*keys, "modality"], sort=False, dropna=False):
        for measure in MEASURES:
            out[(*key, measure)] = tuple(group[measure].notna())
    return out


def _verdict(
    estimate: float, low: float, high: float, defined: tuple, margin: float
) -> tuple[str, str]:
    """(``equivalent`` or ``differs``, why) of one row; ``defined`` (OLD's, NEW's) per-seed
    has-the-measure flags."""
    old, new = defined
    if old != new:
        return "differs", "defined in one run only"
    if np.isnan(estimate):
        return "equivalent", "undefined in both"
    if np.isnan(low) or np.isnan(high):
        if estimate == 0:
            return "equivalent", "identical"
        return "differs", "no interval (one seed, one case)"
    if low <= 0 <= high:
        return "equivalent", "interval contains 0"
    if -margin <= low and high <= margin:
        return "equivalent", f"interval within +-{margin:g}"
    return "differs", f"interval excludes 0 and leaves +-{margin:g}"


def format_table(table: pd.DataFrame, digits: int = 3) -> str:
    """The table for reading: ``difference [low, high]`` per row, as markdown."""
    cell = table.apply(
        lambda r: (
            f"{r['difference']:+.{digits}f} [{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}]"
        ),
        axis=1,
    )
    shown = table.drop(columns=["measure", "difference", "ci_low", "ci_high", "n_cases"])
    return to_markdown(shown.assign(**{"NEW - OLD [95%]": cell}).astype(str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, metavar="OLD", help="the run before the change")
    parser.add_argument("new", type=Path, metavar="NEW", help="the same scenarios after it")
    parser.add_argument("--margin", type=float, default=MARGIN, help="equivalence margin")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    logging.basicConfig(format="equivalence.py: %(message)s", level=logging.INFO)
    try:
        table = equivalence(read_run(args.old), read_run(args.new), margin=args.margin)
    except FedllError as error:
        print(f"equivalence.py: {error}", file=sys.stderr)
        return 2
    if args.csv is not None:
        table.to_csv(args.csv, index=False)
    print(format_table(table))
    differs = int((table["verdict"] == "differs").sum())
    print(f"{len(table) - differs} of {len(table)} rows equivalent, {differs} differ")
    return 1 if differs else 0


if __name__ == "__main__":
    sys.exit(main())
