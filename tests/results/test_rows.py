"""A trial's results: the rows of each evaluated round, the per-round events, the files."""

from __future__ import annotations

import numpy as np

from fedll.config import Trial
from fedll.federation.stream import Arrival, Round
from fedll.results.columns import ATTENTION_COLUMNS, RESULT_COLUMNS
from fedll.results.rows import TrialResults

TRIAL = Trial(model="dycnn", ordering="alternating", arrival_batch=1, strategy="fedavg", seed=3)
STREAM = (
    Round(1, (Arrival("h-t2", "t2", ("p1",)),)),
    Round(2, (Arrival("h-flair", "flair", ("p2",)), Arrival("h-t2b", "t2", ("p3",)))),
)


def results() -> TrialResults:
    out = TrialResults(trial=TRIAL, stream=STREAM)
    out.add_round(0, "t2", ["a", "b"], [0.0, 0.5], {"stem": np.array([2.0, 2.0])})
    out.add_round(2, "flair", ["c"], [1.0], {"stem": np.array([[1.0, 3.0], [3.0, 5.0]])})
    out.failures[2] = ["h-x", "h-a"]
    out.rejected[1] = ["h-t2"]
    return out


def test_rows_carry_the_trial_the_round_and_its_arrivals():
    frame, attention = results().frames()
    assert tuple(frame.columns) == RESULT_COLUMNS
    assert tuple(attention.columns) == ATTENTION_COLUMNS
    assert frame["case"].tolist() == ["a", "b", "c"]
    first, last = frame.iloc[0], frame.iloc[-1]
    assert first["trial"] == TRIAL.trial_id and first["strategy"] == "fedavg"
    assert (first["sites"], first["arriving"]) == ("", "")  # round 0: the untrained model
    assert (last["sites"], last["arriving"]) == ("h-flair;h-t2b", "flair;t2")
    assert frame.groupby("round")["failed"].first().to_dict() == {0: "", 2: "h-a;h-x"}
    assert set(frame["rejected"]) == {""}  # round 1 was not evaluated here


def test_grouped_attention_is_averaged_over_output_channels():
    _, attention = results().frames()
    grouped = attention[attention["round"] == 2].sort_values("kernel")
    assert grouped["mass"].tolist() == [2.0, 4.0]  # mean over (C_out=2) rows of each kernel


def test_rows_carry_hd95_surface_dice_and_how_they_were_scored():
    from fedll.config import EvaluationConfig

    out = TrialResults(trial=TRIAL, stream=STREAM)
    evaluation = EvaluationConfig(slices="selected", surface_tolerance_mm=1.5)
    out.add_round(1, "t2", ["a"], [0.5], {}, hd95=[3.0], surface_dice=[0.25], evaluation=evaluation)
    row = out.frames()[0].iloc[0]
    assert (row["dice"], row["hd95"], row["surface_dice"]) == (0.5, 3.0, 0.25)
    assert (row["evaluated_slices"], row["surface_tolerance_mm"]) == ("selected", 1.5)
    plain = results().frames()[0]  # Dice alone: the others are NaN, the scoring unknown
    assert plain["hd95"].isna().all() and set(plain["evaluated_slices"]) == {""}


def test_rows_carry_the_epsilon_spent_after_their_round_where_the_trial_has_an_accountant():
    out = results()
    out.privacy.update({0: (0.0, 1e-5), 2: (3.5, 1e-5)})
    frame = out.frames()[0]
    assert frame.groupby("round")["epsilon"].first().to_dict() == {0: 0.0, 2: 3.5}
    assert set(frame["dp_delta"]) == {1e-5}
    plain = results().frames()[0]  # no accountant: empty
    assert plain["epsilon"].isna().all() and plain["dp_delta"].isna().all()
    restored = TrialResults(trial=TRIAL, stream=STREAM)
    restored.restore(out.snapshot())
    assert restored.privacy == out.privacy


def test_personal_columns_are_the_mean_over_the_modalitys_sites_so_far():
    out = TrialResults(trial=TRIAL, stream=STREAM)
    out.add_round(0, "t2", ["a", "b"], [0.0, 0.0], {})
    out.set_personal("h-t2", "t2", {"dice": [0.2, 0.4], "hd95": [4.0, 6.0],
                                    "surface_dice": [0.1, 0.3]})  # fmt: skip
    out.add_round(1, "t2", ["a", "b"], [0.1, 0.1], {})
    out.set_personal("h-t2b", "t2", {"dice": [0.6, 0.8], "hd95": [2.0, float("nan")],
                                     "surface_dice": [0.5, 0.5]})  # fmt: skip
    out.add_round(2, "t2", ["a", "b"], [0.1, 0.1], {})
    out.add_round(2, "flair", ["c"], [1.0], {})
    frame = out.frames()[0].set_index(["round", "case"])
    assert frame.loc[0, "personal_dice"].isna().all()  # no site has a personalised model yet
    assert frame.loc[1, "personal_dice"].tolist() == [0.2, 0.4]
    np.testing.assert_allclose(frame.loc[2, "personal_dice"].loc[["a", "b"]], [0.4, 0.6])
    np.testing.assert_allclose(frame.loc[2, "personal_hd95"].loc[["a", "b"]], [3.0, 6.0])
    np.testing.assert_allclose(frame.loc[2, "personal_surface_dice"].loc[["a", "b"]], [0.3, 0.4])
    assert np.isnan(frame.loc[(2, "c"), "personal_dice"])  # no FLAIR site has one
    restored = TrialResults(trial=TRIAL, stream=STREAM)
    restored.restore(out.snapshot())  # a checkpoint keeps the sites' latest scores
    assert restored.personal == out.personal
    assert restored.personal_means("t2", 2) == out.personal_means("t2", 2)
