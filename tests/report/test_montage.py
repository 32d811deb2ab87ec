"""The montage of forgetting: which rounds it shows, and the file from sealed previews."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedll.config import Trial
from fedll.federation.stream import Arrival, Round
from fedll.report import build_report
from fedll.report.montage import shown_rounds
from fedll.results.rows import TrialResults
from fedll.run.store import write_trial

T2, FLAIR, BOTH = frozenset({0}), frozenset({1}), frozenset({0, 1})


def test_rounds_around_each_switch_and_the_last() -> None:
    # t2, t2, flair, flair, t2: switches at rounds 3 and 5
    assert shown_rounds([frozenset(), T2, T2, FLAIR, FLAIR, T2]) == [2, 3, 4, 5]
    assert shown_rounds([frozenset(), T2, T2, T2]) == [1, 3]  # no switch
    assert shown_rounds([frozenset(), T2, BOTH, FLAIR]) == [1, 2, 3]  # {t2} -> both is one
    alternating = [frozenset()] + [T2, FLAIR] * 10
    shown = shown_rounds(alternating, max_rows=4)
    assert shown[0] == 1 and shown[-1] == 20 and len(shown) == 4


def test_report_draws_a_montage_from_the_sealed_previews(tmp_path: Path) -> None:
    trial = Trial(model="static", ordering="blocked", arrival_batch=1, strategy="fedavg", seed=0)
    stream = (Round(1, (Arrival("a", "t2", ("p1",)),)), Round(2, (Arrival("b", "flair", ("p2",)),)))
    results = TrialResults(trial=trial, stream=stream)
    truth = np.zeros((16, 16), bool)
    truth[5:10, 6:11] = True
    image = np.where(truth, 2.0, 0.0)
    for rnd, (t2_dice, shift) in enumerate([(0.0, 8), (0.9, 0), (0.2, 4)]):
        results.add_round(rnd, "t2", ["c1"], [t2_dice], {})
        results.add_round(rnd, "flair", ["c2"], [0.5], {})
        results.add_previews(rnd, "t2", "c1", image, truth, np.roll(truth, shift, axis=0))
        results.add_previews(rnd, "flair", "c2", image, truth, truth)
    write_trial(tmp_path, results, "fp")
    results.frames()[0].to_csv(tmp_path / "results.csv", index=False)
    report = build_report(tmp_path)
    (montage,) = (tmp_path / "plots").glob("montage_*.png")
    assert montage.name.startswith("montage_static_blocked_1_fedavg") and montage in report.plots
    assert montage.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "trials" / f"{trial.trial_id}.previews.npz").write_bytes(b"edited")
    assert not [p for p in build_report(tmp_path).plots if p.name.startswith("montage")]
