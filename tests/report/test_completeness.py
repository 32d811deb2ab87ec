"""What results lack, in words: a trial with no rows was not run (one that ran and lacks
rows is incomplete), so a deployment that ran one trial of eight is not read as seven failures."""

from __future__ import annotations

import pandas as pd

from fedll.report.completeness import Expected, describe, missing_parts


def _rows(trial: str, rounds: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"trial": trial, "round": r, "modality": m, "case": "c1"}
            for r in range(rounds + 1)
            for m in ("t2", "flair")
        ]
    )


def test_trials_without_rows_are_not_run_and_cut_ones_incomplete() -> None:
    results = pd.concat([_rows("a", 4), _rows("b", 3)])
    expected = Expected(rounds={"a": 4, "b": 4, "c": 4, "d": 4, "e": 4, "f": 4})
    missing = missing_parts(results, expected)
    assert missing == {"b": "rounds 4", "c": "no rows", "d": "no rows", "e": "no rows",
                       "f": "no rows"}  # fmt: skip
    assert describe(missing) == (
        "4 trial(s) not run: c, d, e and 1 more; 1 trial(s) incomplete: b (rounds 4)"
    )
    assert describe({"c": "no rows"}) == "1 trial(s) not run: c"
    assert describe({"b": "rounds 4"}) == "1 trial(s) incomplete: b (rounds 4)"
