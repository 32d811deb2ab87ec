"""Differential privacy over the lifelong layer: the wrapper each ``dp`` option builds, clipping
and noise worked out by hand on hand-made replies, the accountant's ε, and a DP rule's state
across a checkpoint."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedProx,
)
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant
from pydantic import TypeAdapter
from rule_replies import INSTRUCTION, LAYOUT, model, reply, run_round, start, through_checkpoint

from fedll.config.instruction import TrainInstruction
from fedll.config.options import StrategyOptions
from strategies.lifelong import Lifelong
from strategies.privacy import KEY_CLIPPING, privacy_spent
from strategies.registry import build_strategy

SITES = {11: "a", 12: "b", 13: "c"}


def options(name: str = "fedavg", **dp: Any) -> StrategyOptions:
    return TypeAdapter(StrategyOptions).validate_python({"name": name, "dp": dp})


def private(name: str = "fedavg", nodes=(11, 12), rounds=(1,), seed=0, **dp: Any) -> Lifelong:
    plan = {r: {n: INSTRUCTION for n in nodes} for r in rounds}
    return build_strategy(options(name, **dp), plan, LAYOUT, SITES, seed=seed)


FIXED = {"noise_multiplier": 1.0, "clipping_norm": 2.0}
ADAPTIVE = {"clipping": "adaptive", "noise_multiplier": 0.5, "clipped_count_stddev": 1.0}


@pytest.mark.parametrize(
    ("dp", "flower_class"),
    [
        ({"side": "server", **FIXED}, DifferentialPrivacyServerSideFixedClipping),
        ({"side": "client", **FIXED}, DifferentialPrivacyClientSideFixedClipping),
        ({"side": "server", **ADAPTIVE}, DifferentialPrivacyServerSideAdaptiveClipping),
        ({"side": "client", **ADAPTIVE}, DifferentialPrivacyClientSideAdaptiveClipping),
    ],
)
def test_each_side_and_clipping_builds_flowers_wrapper_with_its_arguments(dp, flower_class):
    rule = private(**dp).rule
    assert isinstance(rule, flower_class)
    assert type(rule.strategy) is FedAvg  # Flower's own: the accountant needs its aggregate
    assert rule.num_sampled_clients == len(SITES)  # the population, until a round starts
    if dp.get("clipping") == "adaptive":
        assert rule.clipping_norm == 0.1  # Flower's initial norm
        assert (rule.target_clipped_quantile, rule.clip_norm_lr) == (0.5, 0.2)
        assert rule.clipped_count_stddev == 1.0
        # Flower's effective multiplier (z^-2 - (2 sigma_b)^-2)^-1/2 = (4 - 1/4)^-1/2
        assert rule.noise_multiplier == pytest.approx((4 - 0.25) ** -0.5)
        assert privacy_spent(rule) is None  # Flower has no accountant for adaptive clipping
    else:
        assert (rule.noise_multiplier, rule.clipping_norm) == (1.0, 2.0)
        config = rule.accountant.config
        assert (config.target_delta, config.population_size) == (1e-5, len(SITES))
        assert config.sampling_method is SamplingMethod.NO_AMPLIFICATION
        assert privacy_spent(rule).epsilon == 0.0


def test_a_rule_that_is_not_a_plain_mean_gets_no_accountant_and_fedprox_does():
    assert private("fedmedian", **FIXED).rule.accountant is None
    assert isinstance(private("fedmedian", **FIXED).rule.strategy, FedMedian)
    assert private("fedprox", **FIXED).rule.accountant is not None
    assert isinstance(private("fedprox", **FIXED).rule.strategy, FedProx)
    assert private(noise_multiplier=0.0, clipping_norm=1.0).rule.accountant is None  # ε = inf


def test_server_side_clipping_bounds_each_update_and_weighs_them_alike():
    """C = 1, no noise: the update (3, 4) (norm 5) is clipped to (0.6, 0.8), (0, 0.5) is
    kept; their unweighted mean is (0.3, 0.65) although the second site has 3x the samples.
    The counters (5 and 7 steps) take no part in the norm and come back by max."""
    strategy = private(noise_multiplier=0.0, clipping_norm=1.0)
    updates = [model([3.0, 4.0], steps=5), model([0.0, 0.5], steps=7)]
    out = run_round(strategy, 1, model([0.0, 0.0]), updates, samples=[1.0, 3.0])
    np.testing.assert_allclose(out["w"], [0.3, 0.65], rtol=1e-6)
    np.testing.assert_allclose(out["bn.running_var"], [1.0, 1.0])
    assert out["steps"] == 7 and out["steps"].dtype == np.int64


def test_the_noise_is_gaussian_of_std_z_c_over_n_drawn_from_the_seeded_generator():
    """z = 1, C = 2, two updates below C: the aggregate is their mean plus noise of std
    1 * 2 / 2 = 1, drawn (array by array) from NumPy's generator seeded by (seed, round)."""
    strategy = private(seed=3, **FIXED)
    updates = [model([0.2, 0.0]), model([0.0, 0.4])]
    before = np.random.get_state()[1].copy()
    out = run_round(strategy, 1, model([0.0, 0.0]), updates)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # put back as it was
    rng = np.random.RandomState([3, 1])  # the legacy generator np.random.seed seeds
    noise_w = rng.normal(0, 1.0, 2).astype(np.float32)
    noise_var = rng.normal(0, 1.0, 2).astype(np.float32)
    np.testing.assert_allclose(out["w"], np.float32([0.1, 0.2]) + noise_w, rtol=1e-6)
    np.testing.assert_allclose(out["bn.running_var"], 1.0 + noise_var, rtol=1e-6)


def test_n_follows_the_round_arrivals_and_the_updates_that_reach_the_rule():
    """Three sites planned in round 1, one in round 2; in round 1 one reply is lost: the
    noise is calibrated to the two updates averaged (Flower would refuse the round)."""
    plan = {1: {n: INSTRUCTION for n in (11, 12, 13)}, 2: {12: INSTRUCTION}}
    strategy = build_strategy(options(**FIXED), plan, LAYOUT, SITES)
    messages = start(strategy, 1, model([0.0, 0.0]))
    assert strategy.rule.num_sampled_clients == 3
    replies = [reply(messages[11], model([0.1, 0.0])), reply(messages[12], model([0.0, 0.1]))]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and strategy.rule.num_sampled_clients == 2
    assert strategy.rule.accountant.num_releases == 1
    start(strategy, 2, model([0.0, 0.0]))
    assert strategy.rule.num_sampled_clients == 1


def test_client_side_wrappers_tell_the_sites_the_norm_and_the_clipping():
    fixed = start(private(side="client", **FIXED), 1, model([0.0, 0.0]))
    config = fixed[11].content["config"]
    assert (config["clipping_norm"], config[KEY_CLIPPING]) == (2.0, "fixed")
    assert TrainInstruction.from_config(config).arrival_stop == 1  # the site still reads it
    adaptive = start(private(side="client", **ADAPTIVE), 1, model([0.0, 0.0]))
    assert adaptive[11].content["config"][KEY_CLIPPING] == "adaptive"


def test_epsilon_per_round_is_flowers_accountant_over_the_releases():
    strategy = private(rounds=(1, 2, 3), **FIXED)
    no_amplification = (NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION)
    reference = RdpAccountant(PrivacyConfig(1e-5, 3, *no_amplification))
    state, spent = model([0.0, 0.0]), []
    for server_round in (1, 2, 3):
        state = run_round(strategy, server_round, state, [model([0.1, 0.1])] * 2)
        spent.append(privacy_spent(strategy.rule).epsilon)
        reference.compose(GaussianPrivacyEvent(1.0, 2, 3))
        assert spent[-1] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)
    assert spent[0] < spent[1] < spent[2]


@pytest.mark.parametrize(
    "dp",
    [{"side": "server", **FIXED}, {"side": "server", **ADAPTIVE}],
    ids=["fixed", "adaptive"],
)
def test_a_dp_rules_state_survives_a_checkpoint(dp):
    """Two rounds straight, or one round, a checkpoint and the second in a new strategy
    restored from it: the same model, the same ε, the same adaptive clipping norm."""
    rng = np.random.default_rng(1)
    rounds = [[model(rng.normal(size=2) * 0.1, steps=3 * r + i) for i in range(2)] for r in (1, 2)]

    def fresh():
        return private(rounds=(1, 2), seed=5, **dp)

    straight = fresh()
    first = run_round(straight, 1, model([0, 0]), rounds[0])
    expected = run_round(straight, 2, first, rounds[1])

    interrupted = fresh()
    first = run_round(interrupted, 1, model([0, 0]), rounds[0])
    saved = through_checkpoint(interrupted, 1, first)
    resumed = fresh()
    resumed.restore_state(saved)
    assert resumed.rule.clipping_norm == interrupted.rule.clipping_norm
    out = run_round(resumed, 2, first, rounds[1])
    for key in expected:
        np.testing.assert_array_equal(out[key], expected[key])
    assert resumed.rule.clipping_norm == straight.rule.clipping_norm
    if dp.get("clipping") == "adaptive":
        assert straight.rule.clipping_norm != 0.1  # it learnt
    else:
        assert privacy_spent(resumed.rule) == privacy_spent(straight.rule)
        assert privacy_spent(resumed.rule).num_releases == 2


@pytest.mark.parametrize("name", ["scaffold", "ditto"])
def test_dp_is_refused_for_a_rule_whose_sites_send_more_than_the_model(name):
    with pytest.raises(ValueError, match=rf"dp: {name} sends the server more than the model"):
        options(name, side="server", **FIXED)
