"""benchmarks/equivalence.py OLD NEW: the re-baselining check, on hand-made run directories."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from result_rows import frame, result_row

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "equivalence.py"
ARRIVING = ["", "t2", "flair", "t2"]
CURVE = {"t2": [0.05, 0.70, 0.40, 0.75], "flair": [0.05, 0.20, 0.80, 0.50]}


@pytest.fixture(scope="module")
def equivalence():
    spec = importlib.util.spec_from_file_location("equivalence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["equivalence"] = module  # dataclasses and logging look modules up by name
    spec.loader.exec_module(module)
    return module


def results(shift: float = 0.0, seeds=range(4), cases: int = 3, arriving=ARRIVING) -> pd.DataFrame:
    """Two models x ``seeds``: per case the curve + a seed effect + case noise (the same
    draws for every call), Dice + ``shift`` after round 0."""
    rng = np.random.default_rng(7)
    rows = []
    for model in ("static", "dycnn"):
        for seed in seeds:
            for t, arrived in enumerate(arriving):
                for modality, curve in CURVE.items():
                    for c in range(cases):
                        dice = curve[t] + rng.normal(0, 0.03) + (shift if t else 0.0)
                        rows.append(
                            result_row(model, seed, t, arrived, modality, f"{modality}-p{c}",
                                       float(np.clip(dice, 0, 1)))
                        )  # fmt: skip
    return frame(rows)


def run_dir(path: Path, frame: pd.DataFrame) -> Path:
    path.mkdir()
    frame.to_csv(path / "results.csv", index=False)
    return path


def test_identical_runs_are_equivalent_in_every_row(equivalence, tmp_path, capsys):
    old = run_dir(tmp_path / "old", results())
    new = run_dir(tmp_path / "new", results())
    csv = tmp_path / "equivalence.csv"
    assert equivalence.main([str(old), str(new), "--csv", str(csv)]) == 0
    table = pd.read_csv(csv)
    # 2 models x 2 modalities x 3 measures, each a zero difference of zero width
    assert len(table) == 12 and set(table["verdict"]) == {"equivalent"}
    assert set(table["measure"]) == {"final_dice", "forgetting_max", "learning_accuracy"}
    assert (table["difference"] == 0).all() and (table["n_seeds"] == 4).all()
    out = capsys.readouterr().out
    assert "+0.000 [+0.000, +0.000]" in out and "12 of 12 rows equivalent, 0 differ" in out


def test_a_run_shifted_by_a_tenth_of_dice_differs(equivalence, tmp_path, capsys):
    """+0.1 Dice after round 0 on every case: final Dice and learning accuracy differ by
    +0.1; forgetting (max) does not change (a drop below the best is the same drop)."""
    old = run_dir(tmp_path / "old", results())
    new = run_dir(tmp_path / "new", results(shift=0.1))
    assert equivalence.main([str(old), str(new)]) == 1
    table = equivalence.equivalence(results(), results(shift=0.1))
    by_measure = table.groupby("measure")["verdict"].agg(set)
    assert by_measure["final_dice"] == {"differs"}
    assert by_measure["learning_accuracy"] == {"differs"}
    assert by_measure["forgetting_max"] == {"equivalent"}
    final = table[table["measure"] == "final_dice"]
    assert np.allclose(final["difference"], 0.1)
    assert "4 of 12 rows equivalent, 8 differ" in capsys.readouterr().out


def test_a_difference_within_the_margin_is_equivalent_though_it_excludes_zero(equivalence):
    """+0.02 Dice everywhere: the interval is the point +0.02, away from 0 but within +-0.03;
    with a margin of 0.01 it differs."""
    table = equivalence.equivalence(results(), results(shift=0.02))
    final = table[table["measure"] == "final_dice"]
    assert np.allclose(final["difference"], 0.02) and (final["ci_low"] > 0).all()
    assert set(final["verdict"]) == {"equivalent"}
    assert set(final["why"]) == {"interval within +-0.03"}
    strict = equivalence.equivalence(results(), results(shift=0.02), margin=0.01)
    assert set(strict.loc[strict["measure"] == "final_dice", "verdict"]) == {"differs"}


def test_a_measure_undefined_in_both_runs_is_equivalent(equivalence):
    """FLAIR never trains: its learning accuracy is undefined in both runs."""
    arriving = ["", "t2", "t2", "t2"]
    table = equivalence.equivalence(results(arriving=arriving), results(arriving=arriving))
    flair = table[(table["modality"] == "flair") & (table["measure"] == "learning_accuracy")]
    assert set(flair["why"]) == {"undefined in both"} and set(flair["verdict"]) == {"equivalent"}


def test_bad_input_is_one_line_and_exit_2(equivalence, tmp_path, capsys):
    old = run_dir(tmp_path / "old", results())
    fewer = run_dir(tmp_path / "fewer", results(seeds=range(3)))
    assert equivalence.main([str(old), str(fewer)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "equivalence.py: NEW lacks 2 trial(s) of OLD (first: dycnn__s3)"
    assert equivalence.main([str(old), str(tmp_path / "nowhere")]) == 2
    assert "no results.csv" in capsys.readouterr().err
    other = run_dir(tmp_path / "other", results(cases=2))
    assert equivalence.main([str(old), str(other)]) == 2
    err = capsys.readouterr().err
    assert "not scored on the same test cases" in err and len(err.strip().splitlines()) == 1
