"""Differential privacy over the lifelong layer: the wrapper each ``dp`` option builds, clipping
and noise worked out by hand on hand-made replies, the round's n fixed by the plan (add/remove
adjacency: a lost update counts as zero), the accountant's ε against dp-accounting, and a DP
rule's state across a checkpoint.

The site's clipping mod on hand-made messages: a train message whose config carries Flower's
clipping norm has the update clipped (counters untouched), any other passes as is."""

from __future__ import annotations

from typing import Any

import dp_accounting
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
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
from fedll.config.strategies import StrategyOptions
from fedll.federation.flower_private import assign_message_id, set_task_identity
from strategies.lifelong import Lifelong
from strategies.privacy import KEY_CLIPPING, clipping_mod, privacy_spent
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


@pytest.mark.parametrize("side", ["server", "client"])
def test_n_is_the_rounds_planned_sites_whatever_arrives(side):
    """Three sites planned in round 1, one in round 2; in round 1 one reply is lost. z = 0,
    C = 1: the release is the two updates' sum over the 3 planned, (0.1, 0.1) / 3, the lost
    update counting as zero (the mean of the two that arrived, (0.05, 0.05), would tell the
    count); n stays 3, the public n of the round."""
    plan = {1: {n: INSTRUCTION for n in (11, 12, 13)}, 2: {12: INSTRUCTION}}
    dp = {"side": side, "noise_multiplier": 0.0, "clipping_norm": 1.0}
    strategy = build_strategy(options(**dp), plan, LAYOUT, SITES)
    messages = start(strategy, 1, model([0.0, 0.0], var=2.0))
    assert strategy.rule.num_sampled_clients == 3
    replies = [
        reply(messages[11], model([0.1, 0.0], var=2.3)),
        reply(messages[12], model([0.0, 0.1], var=2.0)),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [0.1 / 3, 0.1 / 3], rtol=1e-6)
    np.testing.assert_allclose(arrays["bn.running_var"].numpy(), [2.1, 2.1], rtol=1e-6)
    assert strategy.rule.num_sampled_clients == 3
    start(strategy, 2, model([0.0, 0.0]))
    assert strategy.rule.num_sampled_clients == 1


def test_removing_one_sites_update_moves_the_release_by_at_most_c_over_n():
    """Add/remove adjacency, by hand: C = 1, z = 0, three planned sites with updates (1, 0),
    (1, 0), (-1, 0). All three: (1/3, 0); without the third (its reply lost): (2/3, 0), a
    move of 1/3 = C / n. Over the arrivals it would be (1, 0), a move of 2/3 = 2C / n."""
    dp = {"noise_multiplier": 0.0, "clipping_norm": 1.0}
    updates = [model([1.0, 0.0]), model([1.0, 0.0]), model([-1.0, 0.0])]
    released = []
    for arrived in (updates, updates[:2]):
        strategy = private(nodes=(11, 12, 13), **dp)
        messages = start(strategy, 1, model([0.0, 0.0]))
        replies = [reply(messages[n], u) for n, u in zip((11, 12, 13), arrived, strict=False)]
        arrays, _ = strategy.aggregate_train(1, replies)
        released.append(arrays["w"].numpy())
    np.testing.assert_allclose(released, [[1 / 3, 0.0], [2 / 3, 0.0]], rtol=1e-6)
    assert np.linalg.norm(released[0] - released[1]) <= 1.0 / 3 * (1 + 1e-6)


def test_a_short_rounds_noise_is_that_of_the_planned_n():
    """z = 1, C = 2, three planned, two arrive (below C): the release is their sum over 3
    plus noise of std 1 * 2 / 3, NumPy's generator seeded by (seed, round) as in a full round
    (Flower draws it at std z * C / 2 around the mean of the two; both are scaled by 2/3)."""
    strategy = private(nodes=(11, 12, 13), seed=3, **FIXED)
    messages = start(strategy, 1, model([0.0, 0.0]))
    replies = [reply(messages[11], model([0.2, 0.0])), reply(messages[12], model([0.0, 0.4]))]
    arrays, _ = strategy.aggregate_train(1, replies)
    rng = np.random.RandomState([3, 1])
    noise_w, noise_var = rng.normal(0, 1.0, 2), rng.normal(0, 1.0, 2)
    np.testing.assert_allclose(
        arrays["w"].numpy(), np.float32([0.2, 0.4]) / 3 + 2 / 3 * noise_w, rtol=1e-5
    )
    np.testing.assert_allclose(arrays["bn.running_var"].numpy(), 1 + 2 / 3 * noise_var, rtol=1e-5)
    assert strategy.rule.accountant.num_releases == 1


def test_a_round_whose_every_update_is_lost_still_releases_and_is_accounted():
    """Two planned sites, neither replies: the release is the model plus noise of std
    z * C / 2 (a sum of zero updates; keeping the model would tell that none arrived), and it
    is composed; the counter stays the model's. A round with no planned site releases
    nothing."""
    strategy = private(rounds=(1,), seed=4, **FIXED)
    start(strategy, 1, model([0.5, 0.5], steps=9))
    arrays, _ = strategy.aggregate_train(1, [])
    assert sorted(strategy.failures[1]) == ["a", "b"]
    rng = np.random.RandomState([4, 1])
    np.testing.assert_allclose(arrays["w"].numpy(), 0.5 + rng.normal(0, 1.0, 2), rtol=1e-5)
    assert arrays["steps"].numpy() == 9 and arrays["steps"].dtype == "int64"
    assert strategy.rule.accountant.num_releases == 1
    assert start(strategy, 2, model([0.5, 0.5])) == {}
    assert strategy.aggregate_train(2, []) == (None, None)
    assert strategy.rule.accountant.num_releases == 1


def test_rules_without_an_accountant_average_what_arrives():
    """A median (not a mean) under fixed clipping and a mean under adaptive clipping keep n
    to the updates that reach the rule, and a round without one keeps the model."""
    for strategy in (
        private("fedmedian", (11, 12, 13), (1, 2), noise_multiplier=0.0, clipping_norm=1.0),
        private(nodes=(11, 12, 13), rounds=(1, 2), **ADAPTIVE),
    ):
        messages = start(strategy, 1, model([0.0, 0.0]))
        replies = [reply(messages[11], model([0.1, 0.0])), reply(messages[12], model([0.0, 0.1]))]
        strategy.aggregate_train(1, replies)
        assert strategy.rule.num_sampled_clients == 2
        start(strategy, 2, model([0.0, 0.0]))
        assert strategy.aggregate_train(2, []) == (None, None)


def test_client_side_wrappers_tell_the_sites_the_norm_and_the_clipping():
    fixed = start(private(side="client", **FIXED), 1, model([0.0, 0.0]))
    config = fixed[11].content["config"]
    assert (config["clipping_norm"], config[KEY_CLIPPING]) == (2.0, "fixed")
    assert TrainInstruction.from_config(config).arrival_stop == 1  # the site still reads it
    adaptive = start(private(side="client", **ADAPTIVE), 1, model([0.0, 0.0]))
    assert adaptive[11].content["config"][KEY_CLIPPING] == "adaptive"


def test_epsilon_is_dp_accountings_under_add_remove_over_every_release():
    """Independently of Flower's accountant: after each of four rounds (all three reply; one
    reply lost; every reply lost; all reply) the ε is dp-accounting's RDP for add/remove
    adjacency over that many Gaussian releases of multiplier z = 1, at δ = 1e-5: 10.73 after
    four (the issue's figure). Each round released once, whatever arrived."""
    strategy = private(nodes=(11, 12, 13), rounds=(1, 2, 3, 4), **FIXED)
    arrived = {1: (11, 12, 13), 2: (11, 13), 3: (), 4: (11, 12, 13)}
    state = model([0.0, 0.0])
    for server_round, nodes in arrived.items():
        messages = start(strategy, server_round, state)
        replies = [reply(messages[n], model([0.1, -0.1])) for n in nodes]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        state = {k: v.numpy() for k, v in arrays.items()}
        reference = dp_accounting.rdp.RdpAccountant(
            neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        )
        reference.compose(dp_accounting.GaussianDpEvent(1.0), server_round)
        spent = privacy_spent(strategy.rule)
        assert spent.num_releases == server_round
        assert spent.epsilon == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert privacy_spent(strategy.rule).epsilon == pytest.approx(10.73, abs=0.005)


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


# -- the site side ----------------------------------------------------------------------

GLOBAL = {"w": np.zeros(2, np.float32), "steps": np.array(4)}
TRAINED = {"w": np.array([3.0, 4.0], np.float32), "steps": np.array(9)}  # update norm 5


def arrays(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in state.items()})


def message(config: dict) -> Message:
    set_task_identity(run_id=1, node_id=SUPERLINK_NODE_ID, task_id=1)
    content = RecordDict({"arrays": arrays(GLOBAL), "config": ConfigRecord(config)})
    msg = Message(content, message_type="train", dst_node_id=5)
    assign_message_id(msg, "m")
    return msg


def site(received: list[dict[str, np.ndarray]]):
    """A stand-in for the site's training: records the model it got, replies TRAINED."""

    def call_next(msg: Message, context: Context) -> Message:
        received.append({k: v.numpy() for k, v in msg.content["arrays"].items()})
        metrics = MetricRecord({"num-examples": 3})
        return Message(RecordDict({"arrays": arrays(TRAINED), "metrics": metrics}), reply_to=msg)

    return call_next


CONTEXT = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})


def test_fixed_clipping_at_the_site_scales_the_update_to_the_norm_and_keeps_counters():
    received: list = []
    reply = clipping_mod(message({"clipping_norm": 1.0, KEY_CLIPPING: "fixed"}), CONTEXT,
                         site(received))  # fmt: skip
    out = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    np.testing.assert_allclose(out["w"], [0.6, 0.8], rtol=1e-6)  # (3, 4) / 5
    assert out["steps"] == 9 and out["steps"].dtype == np.int64  # not clipped
    assert list(out) == ["w", "steps"]
    assert set(received[0]) == {"w", "steps"}  # the site trained the whole model


def test_adaptive_clipping_at_the_site_also_reports_whether_it_clipped():
    reply = clipping_mod(message({"clipping_norm": 10.0, KEY_CLIPPING: "adaptive"}), CONTEXT,
                         site([]))  # fmt: skip
    np.testing.assert_allclose(reply.content["arrays"]["w"].numpy(), [3.0, 4.0])  # 5 < 10
    assert reply.content["metrics"]["norm_bit"] == 0


def test_a_train_message_without_a_clipping_norm_passes_untouched():
    reply = clipping_mod(message({"server-round": 1}), CONTEXT, site([]))
    np.testing.assert_allclose(reply.content["arrays"]["w"].numpy(), [3.0, 4.0])
    assert "norm_bit" not in reply.content["metrics"]
