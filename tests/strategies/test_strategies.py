"""The lifelong strategies on hand-made replies: what they send, what they accept, what
they reject or record as failed, and what they aggregate (worked out by hand)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from pydantic import TypeAdapter
from rule_replies import INSTRUCTION

from fedll.config.instruction import TrainInstruction
from fedll.config.options import option_names
from fedll.config.strategies import StrategyOptions
from fedll.federation.flower_private import assign_message_id, set_task_identity
from fedll.models import ModelLayout
from strategies.lifelong import Lifelong
from strategies.registry import STRATEGIES, build_strategy

NODES = {11: "site-a", 12: "site-b", 13: "site-c", 14: "site-d"}
LAYOUT = ModelLayout(
    groups={"bank": "kernel_bank", "w": "other", "steps": "counter"},
    banks={"bank": ("layer", (2,))},
    trainable=frozenset({"bank", "w"}),
)
GLOBAL = {
    "bank": np.zeros((2, 3), np.float32),
    "w": np.zeros(2, np.float32),
    "steps": np.array(0),
}


def state(value: float, **changes: np.ndarray) -> dict[str, np.ndarray]:
    out = {
        "bank": np.full((2, 3), value, np.float32),
        "w": np.full(2, value, np.float32),
        "steps": np.array(abs(int(value))),
    }
    return {**out, **changes}


def make(name: str = "fedavg", nodes: tuple[int, ...] = tuple(NODES), **options: Any):
    """A strategy whose round 1 trains ``nodes``, and its round-1 messages."""
    set_task_identity(run_id=1, node_id=SUPERLINK_NODE_ID, task_id=1)
    plan = {1: {node: INSTRUCTION for node in nodes}}
    strategy = build_strategy(_options(name, **options), plan=plan, layout=LAYOUT, site_of=NODES)
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    for i, m in enumerate(messages):
        assign_message_id(m, f"m{i}")
    return strategy, {m.metadata.dst_node_id: m for m in messages}


def _options(name: str, **options: Any) -> StrategyOptions:
    return TypeAdapter(StrategyOptions).validate_python({"name": name, **options})


def reply(
    message: Message, arrays: dict[str, np.ndarray], samples: float, mass: list[float] | None = None
) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": samples}),
            "attention": ConfigRecord({} if mass is None else {"mass/layer": mass}),
        }
    )
    return Message(content, reply_to=message)


def failure(message: Message) -> Message:
    return Message(Error(code=2, reason="boom"), reply_to=message)


def aggregated(result: tuple[ArrayRecord | None, Any]) -> dict[str, np.ndarray] | None:
    arrays, _ = result
    return None if arrays is None else {k: v.numpy() for k, v in arrays.items()}


def test_the_registry_binds_every_strategy_of_the_schema_once_in_its_order():
    assert tuple(STRATEGIES) == option_names(StrategyOptions)
    for name, home in STRATEGIES.items():
        assert home.name == name
    sided = {name for name, home in STRATEGIES.items() if home.site is not None}
    assert sided == {"scaffold", "ditto"}


@pytest.mark.parametrize("name", option_names(StrategyOptions))
def test_every_strategy_of_the_schema_builds_and_configures_a_round(name):
    strategy, messages = make(name, nodes=(11,))
    assert isinstance(strategy, Lifelong)
    assert TrainInstruction.from_config(messages[11].content["config"]).arrival_stop == 1


def test_configure_train_sends_each_arriving_node_its_instruction():
    strategy, messages = make(nodes=(11, 13))
    assert sorted(messages) == [11, 13]
    config = messages[13].content["config"]
    assert config["arrival-stop"] == 1 and config["server-round"] == 1
    assert config["local-norm"] is False
    assert config["proximal-mu"] == 0.0


def test_fedprox_and_fedbn_tell_the_sites():
    _, messages = make("fedprox", mu=0.25)
    assert messages[11].content["config"]["proximal-mu"] == 0.25
    _, messages = make("fedbn")
    assert messages[11].content["config"]["local-norm"] is True
    _, messages = make("dynamic-aware", norm="local")
    assert messages[11].content["config"]["local-norm"] is True


def test_fedavg_rejects_bad_updates_records_failures_and_averages_the_rest(caplog):
    strategy, m = make()
    replies = [
        reply(m[11], state(1.0), samples=1),
        reply(m[12], state(3.0), samples=3),
        reply(m[13], state(9.0, w=np.array([np.nan, 0], np.float32)), samples=5),
        failure(m[14]),
    ]
    with caplog.at_level(logging.WARNING, logger="strategies.lifelong"):
        out = aggregated(strategy.aggregate_train(1, replies))
    # site-c's NaN update is left out: (1 * 1 + 3 * 3) / 4 = 2.5; counters take the max
    np.testing.assert_allclose(out["w"], [2.5, 2.5])
    assert out["steps"] == 3
    assert strategy.rejected[1] == ["site-c"]
    assert strategy.failures[1] == ["site-d"]
    assert "update of site site-c rejected: 'w' has non-finite values" in caplog.text
    assert "site site-d failed: raised: boom" in caplog.text


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (state(1.0, w=np.zeros(3, np.float32)), "'w' has shape (3,), expected (2,)"),
        (state(1.0, w=np.zeros(2, np.float64)), "'w' has dtype float64, expected float32"),
        ({k: v for k, v in state(1.0).items() if k != "w"}, "missing 'w'"),
    ],
    ids=["shape", "dtype", "missing"],
)
def test_wrong_shapes_and_dtypes_are_rejected(bad, reason, caplog):
    strategy, m = make(nodes=(11, 12))
    replies = [reply(m[11], bad, 1), reply(m[12], state(2.0), 1)]
    with caplog.at_level(logging.WARNING, logger="strategies.lifelong"):
        out = aggregated(strategy.aggregate_train(1, replies))
    np.testing.assert_allclose(out["w"], [2.0, 2.0])
    assert strategy.rejected[1] == ["site-a"]
    assert reason in caplog.text


def test_a_zero_or_non_finite_sample_count_is_rejected():
    strategy, m = make(nodes=(11, 12))
    replies = [reply(m[11], state(1.0), 0), reply(m[12], state(2.0), float("nan"))]
    assert aggregated(strategy.aggregate_train(1, replies)) is None
    assert strategy.rejected[1] == ["site-a", "site-b"]


def test_a_node_without_a_reply_is_failed_and_when_all_fail_the_model_is_kept(caplog):
    strategy, m = make(nodes=(11, 12, 13))
    replies = [failure(m[11]), reply(m[12], state(1.0, w=np.full(2, np.inf, np.float32)), 1)]
    with caplog.at_level(logging.WARNING, logger="strategies.lifelong"):
        result = strategy.aggregate_train(1, replies)
    assert result == (None, None)  # Flower's loop keeps the previous arrays
    assert strategy.failures[1] == ["site-a", "site-c"]
    assert strategy.rejected[1] == ["site-b"]
    assert "site site-c failed: no reply before the timeout" in caplog.text
    assert "round 1: no usable update (2 failed, 1 rejected); the global model is kept" in (
        caplog.text
    )


def test_dynamic_aware_weighs_each_kernel_by_attention_mass():
    strategy, m = make("dynamic-aware", nodes=(11, 12))
    bank_a = np.array([[1.0] * 3, [10.0] * 3], np.float32)
    bank_b = np.array([[5.0] * 3, [20.0] * 3], np.float32)
    replies = [
        reply(m[11], state(2.0, bank=bank_a), samples=1, mass=[3.0, 1.0]),
        reply(m[12], state(6.0, bank=bank_b), samples=3, mass=[1.0, 1.0]),
    ]
    out = aggregated(strategy.aggregate_train(1, replies))
    # kernel 0: 3/4 * 1 + 1/4 * 5 = 2; kernel 1: 1/2 * 10 + 1/2 * 20 = 15
    np.testing.assert_allclose(out["bank"], [[2.0] * 3, [15.0] * 3])
    # everything else by samples: 1/4 * 2 + 3/4 * 6 = 5
    np.testing.assert_allclose(out["w"], [5.0, 5.0])


def test_dynamic_aware_rejects_an_update_without_usable_attention_mass():
    strategy, m = make("dynamic-aware", nodes=(11, 12, 13))
    replies = [
        reply(m[11], state(1.0), samples=1, mass=[1.0, 1.0]),
        reply(m[12], state(2.0), samples=1, mass=None),
        reply(m[13], state(3.0), samples=1, mass=[1.0, float("nan")]),
    ]
    out = aggregated(strategy.aggregate_train(1, replies))
    np.testing.assert_allclose(out["w"], [1.0, 1.0])
    assert strategy.rejected[1] == ["site-b", "site-c"]


def test_fedavgm_steps_with_momentum_and_keeps_its_velocity_over_a_kept_round():
    strategy, m = make("fedavgm", nodes=(11,), server_lr=1.0, server_momentum=0.5)
    assert isinstance(strategy, Lifelong)
    out = aggregated(strategy.aggregate_train(1, [reply(m[11], state(-1.0), 1)]))
    # first step: v = 0 - (-1) = 1, w = 0 - 1 = -1 (FedAvg)
    np.testing.assert_allclose(out["w"], [-1.0, -1.0])
    assert aggregated(strategy.aggregate_train(1, [failure(m[11])])) is None
    velocity = dict(zip(GLOBAL, strategy.rule.momentum_vector, strict=True))
    np.testing.assert_allclose(velocity["w"], [1.0, 1.0])
    # next round from w = -1 with the average at -2: v = 0.5 * 1 + 1 = 1.5, w = -1 - 1.5
    arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in out.items()})
    strategy.plan = {2: {11: INSTRUCTION}}
    (message,) = strategy.configure_train(2, arrays, ConfigRecord(), grid=None)
    assign_message_id(message, "next")
    out = aggregated(strategy.aggregate_train(2, [reply(message, state(-2.0), 1)]))
    np.testing.assert_allclose(out["w"], [-2.5, -2.5])
    assert out["steps"] == 2  # a counter takes the update's value: no momentum step


def test_strategy_options_reach_the_strategy():
    strategy = build_strategy(_options("fedprox", mu=0.3), plan={}, layout=LAYOUT, site_of={})
    assert strategy.rule.proximal_mu == 0.3
    strategy = build_strategy(
        _options("fedavgm", server_momentum=0.2), plan={}, layout=LAYOUT, site_of={}
    )
    assert (strategy.rule.server_learning_rate, strategy.rule.server_momentum) == (1.0, 0.2)
