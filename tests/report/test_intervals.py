"""The interval of ``fedll report --compare`` (fedll.report.intervals): exact on hand-made
tables, and its coverage measured on simulated comparisons whose true difference is known.

The simulation goes through the comparison's own code (:func:`fedll.report.compare.
paired_difference` on :class:`ArmTrial` arrays, every measure recomputed by
:func:`fedll.report.summary.matrix_measures`). Each data set has per seed and arm a (T + 1,
n) Dice matrix per modality (T2, FLAIR; 4 rounds alternating from T2; 10 test cases each, as
in studies/routing-paired): the arm's true curve + a seed effect per round + a case effect
shared by every seed (a level and a per-round part, each arm its own) + seed x case noise,
plus a case level common to both arms (it cancels in the pairing). Three regimes: **seed
noise** only (sd 0.04), **case noise** only (seed x case, sd 0.10) and **shared case
effects** (sd 0.06 + 0.06 shared, with seed 0.015 and seed x case 0.04). The curves' maxima
over rounds are 0.10 apart, so the non-linear measures (forgetting (max)) stay close to their
value on the true curves, the known difference.

Coverage of the 95% intervals, pooled over final Dice, forgetting (max) and learning
accuracy of T2, FLAIR and their mean (300 data sets each; standard error about 0.013):

| regime | seeds | this interval | the hierarchical percentile bootstrap it replaced |
|---|---|---|---|
| seed noise | 5 | 0.950 | 0.82 |
| seed noise | 10 | 0.951 | 0.91 |
| case noise | 5 | 0.956 | 0.98 |
| case noise | 10 | 0.959 | 0.99 |
| shared case effects | 5 | 0.952 | 0.71 |
| shared case effects | 10 | 0.947 | 0.55 |

Every single measure's coverage is 0.934 or more. The bootstrap's were measured once with
fedll before issue 32 (the same simulation, 100 data sets of 400 replicates each): it draws
the seeds with replacement, whose spread a few seeds understate, and each drawn seed's cases
afresh, which averages away the case effects all seeds share; with seed x case noise alone it
counts that noise twice. The full table is the slow test; the fast one runs a regime the
bootstrap misses (it fails on the code before issue 32).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedll.report.compare import ArmTrial, paired_difference
from fedll.report.intervals import seed_case_interval
from fedll.report.summary import matrix_measures, measures

ARRIVING = [frozenset(), frozenset({0}), frozenset({1}), frozenset({0}), frozenset({1})]
CURVES = {  # (T + 1, M): T2, FLAIR per round; the arm forgets less T2 and learns a little less
    "arm": np.array([[0.10, 0.70, 0.40, 0.60, 0.50], [0.10, 0.15, 0.75, 0.50, 0.80]]).T,
    "baseline": np.array([[0.10, 0.75, 0.30, 0.65, 0.40], [0.10, 0.15, 0.80, 0.45, 0.85]]).T,
}
REGIMES = {  # sd of: seed effect, case level and case x round (arm's own, shared by seeds), noise
    "seed noise": (0.04, 0.0, 0.0, 0.0),
    "case noise": (0.0, 0.0, 0.0, 0.10),
    "shared case effects": (0.015, 0.06, 0.06, 0.04),
}
CHECKED = ("final_dice", "forgetting_max", "learning_accuracy")


def true_difference() -> np.ndarray:
    """(n_measures, M + 1): the measures' difference on the true curves, then its mean over
    the modalities (as paired_difference returns it)."""
    d = matrix_measures(CURVES["arm"], ARRIVING) - matrix_measures(CURVES["baseline"], ARRIVING)
    return np.concatenate([d, d.mean(axis=1, keepdims=True)], axis=1)


def simulate(
    rng: np.random.Generator, regime: str, n_seeds: int, n_cases: int = 10
) -> tuple[list[ArmTrial], list[ArmTrial]]:
    """One data set: the arm's and the baseline's trials, seed by seed."""
    seed_sd, level_sd, round_sd, noise_sd = REGIMES[regime]
    rounds, modalities = CURVES["arm"].shape
    common = rng.normal(0, 0.08, (1, n_cases, modalities))
    shared = {
        arm: rng.normal(0, level_sd, (1, n_cases, modalities))
        + rng.normal(0, round_sd, (rounds, n_cases, modalities))
        for arm in CURVES
    }
    ids = tuple(tuple(f"{m}-{i}" for i in range(n_cases)) for m in range(modalities))
    trials: dict[str, list[ArmTrial]] = {arm: [] for arm in CURVES}
    for _ in range(n_seeds):
        for arm, curve in CURVES.items():
            dice = (
                curve[:, None, :]
                + rng.normal(0, seed_sd, (rounds, 1, modalities))
                + common
                + shared[arm]
                + rng.normal(0, noise_sd, (rounds, n_cases, modalities))
            )
            cases = tuple(dice[:, :, m] for m in range(modalities))
            trials[arm].append(ArmTrial(cases, ids, ARRIVING))
    return trials["arm"], trials["baseline"]


def coverage(regime: str, n_seeds: int, n_sets: int) -> dict[str, float]:
    """Per measure of CHECKED, and over all of them (``all``), the share of the data sets'
    T2, FLAIR and mean intervals that hold the true difference; ``bias``: the largest
    distance of the estimates' mean from the true difference, in standard errors of that
    mean (the truth the coverage is measured against must be the estimate's expectation: a
    max over rounds would be biased near a tie, which the curves avoid)."""
    rows = [list(measures()).index(m) for m in CHECKED]
    truth = true_difference()[rows]
    rng = np.random.default_rng(20261207)
    hits, estimates = [], []
    for _ in range(n_sets):
        estimate, low, high = paired_difference(*simulate(rng, regime, n_seeds))
        hits.append((low[rows] <= truth) & (truth <= high[rows]))
        estimates.append(estimate[rows])
    held = np.array(hits)  # (n_sets, measures, M + 1)
    spread = np.std(estimates, axis=0, ddof=1) / np.sqrt(n_sets)
    bias = float(np.max(np.abs(np.mean(estimates, axis=0) - truth) / spread))
    return {"all": float(held.mean()), "bias": bias} | {
        m: float(held[:, i].mean()) for i, m in enumerate(CHECKED)
    }


def assert_nominal(covered: dict[str, float]) -> None:
    assert 0.93 <= covered["all"] <= 0.995, covered
    assert min(covered[m] for m in CHECKED) >= 0.90, covered
    assert covered["bias"] < 4, covered


def test_coverage_with_shared_case_effects_and_5_seeds():
    """The percentile bootstrap covered 0.71 here."""
    assert_nominal(coverage("shared case effects", 5, 100))


@pytest.mark.slow
@pytest.mark.parametrize("n_seeds", [5, 10])
@pytest.mark.parametrize("regime", list(REGIMES))
def test_coverage_is_nominal_for_seed_noise_case_noise_and_shared_case_effects(regime, n_seeds):
    assert_nominal(coverage(regime, n_seeds, 300))


def test_seeds_alone_give_the_t_interval_over_seeds():
    """No case differs (every jackknife value is its seed's difference): the interval is the
    mean of 1, 2, 3, 4 +- t(0.975, 3) * sd / 2."""
    per_seed = np.array([[1.0], [2.0], [3.0], [4.0]])
    jackknife = [np.repeat(per_seed[:, None, :], 5, axis=1)]
    got = seed_case_interval(per_seed, jackknife)
    half = stats.t.ppf(0.975, 3) * np.std([1, 2, 3, 4], ddof=1) / 2
    assert got.estimate[0] == pytest.approx(2.5)
    assert got.low[0] == pytest.approx(2.5 - half) and got.high[0] == pytest.approx(2.5 + half)
    assert got.dof[0] == pytest.approx(3)


def test_one_seed_gives_the_t_interval_over_cases_of_a_mean():
    """One seed, a measure that is the mean over 5 cases: the jackknife's standard error is
    sd / sqrt(5), on 4 degrees of freedom."""
    cases = np.array([0.1, 0.3, 0.2, 0.6, 0.3])
    left_out = np.array([np.delete(cases, i).mean() for i in range(5)])
    got = seed_case_interval(np.array([[cases.mean()]]), [left_out[None, :, None]])
    half = stats.t.ppf(0.975, 4) * cases.std(ddof=1) / np.sqrt(5)
    assert got.low[0] == pytest.approx(cases.mean() - half)
    assert got.high[0] == pytest.approx(cases.mean() + half)


def test_a_mean_over_a_seed_by_case_table_gets_the_crossed_design_s_variance():
    """For the mean of a (seed x case) table y, the variance is (MS_seed + MS_case -
    MS_error) / (S n) of the two-way ANOVA without replication, on Satterthwaite's degrees
    of freedom for its seed part MS_seed / (S n) and case part (MS_case - MS_error) / (S n)."""
    y = np.array([[0.2, 0.5, 0.1, 0.7, 0.4], [0.3, 0.9, 0.2, 0.8, 0.4], [0.1, 0.6, 0.0, 0.9, 0.6]])
    S, n = y.shape
    grand, seeds, cases = y.mean(), y.mean(axis=1), y.mean(axis=0)
    ms_seed = n * ((seeds - grand) ** 2).sum() / (S - 1)
    ms_case = S * ((cases - grand) ** 2).sum() / (n - 1)
    ms_error = ((y - seeds[:, None] - cases[None, :] + grand) ** 2).sum() / ((S - 1) * (n - 1))
    assert ms_case > ms_error  # the case part is there
    seed_part, case_part = ms_seed / (S * n), (ms_case - ms_error) / (S * n)
    dof = (seed_part + case_part) ** 2 / (seed_part**2 / (S - 1) + case_part**2 / (n - 1))
    left_out = np.stack([[np.delete(row, i).mean() for i in range(n)] for row in y])
    got = seed_case_interval(seeds[:, None], [left_out[:, :, None]])
    assert got.se[0] == pytest.approx(np.sqrt(seed_part + case_part))
    assert got.dof[0] == pytest.approx(dof)
    half = stats.t.ppf(0.975, dof) * got.se[0]
    assert got.low[0] == pytest.approx(grand - half) and got.high[0] == pytest.approx(grand + half)


def test_case_noise_that_is_no_shared_case_effect_is_not_counted_twice():
    """Seed x case noise alone (no case effect shared by the seeds) is already in the spread
    of the seeds' differences: where the case mean square is below the interaction's, the
    case part is 0 and the interval is the t interval over seeds."""
    y = np.array([[0.2, 0.6, 0.4], [0.5, 0.3, 0.4], [0.4, 0.4, 0.7]])
    S, n = y.shape
    cases, seeds = y.mean(axis=0), y.mean(axis=1)
    ms_case = S * ((cases - y.mean()) ** 2).sum() / (n - 1)
    ms_error = ((y - seeds[:, None] - cases + y.mean()) ** 2).sum() / ((S - 1) * (n - 1))
    assert ms_case < ms_error
    left_out = np.stack([[np.delete(row, i).mean() for i in range(n)] for row in y])
    got = seed_case_interval(seeds[:, None], [left_out[:, :, None]])
    assert got.se[0] == pytest.approx(np.std(seeds, ddof=1) / np.sqrt(S))
    assert got.dof[0] == pytest.approx(S - 1)


def test_nan_seeds_are_left_out_and_too_little_data_has_no_interval():
    per_seed = np.array([[1.0, np.nan, 0.0], [3.0, np.nan, 0.0]])
    got = seed_case_interval(per_seed, [])
    assert got.estimate[0] == pytest.approx(2.0) and np.isnan(got.estimate[1])
    assert np.isnan(got.low[1]) and np.isnan(got.high[1])
    assert got.low[2] == got.high[2] == 0.0  # no spread at all: the point
    one = seed_case_interval(np.array([[0.4]]), [np.array([[[0.4]]])])  # one seed, one case
    assert one.estimate[0] == pytest.approx(0.4) and np.isnan(one.low[0])
