"""Hand-made rounds through the lifelong layer for the tests of fedll's own rules: a model
of one trainable tensor, a norm buffer and a counter, its messages and replies (shared by
``test_lifelong.py``, ``test_privacy.py``, ``test_scaffold.py`` and ``test_ditto.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from pydantic import TypeAdapter

from fedll.config import ModelConfig, SliceConfig, TrainingConfig
from fedll.config.instruction import TrainInstruction
from fedll.config.strategies import StrategyOptions
from fedll.federation.flower_private import assign_message_id, set_task_identity
from fedll.models import ModelLayout
from fedll.run.checkpoint import Checkpoint, decode, encode
from strategies.lifelong import Lifelong

SITES = {11: "a", 12: "b", 13: "c", 14: "d"}
LAYOUT = ModelLayout(
    groups={"w": "other", "bn.running_var": "norm", "steps": "counter"},
    banks={},
    trainable=frozenset({"w"}),
)
INSTRUCTION = TrainInstruction(
    model=ModelConfig(name="static"),
    training=TrainingConfig(),
    slices=SliceConfig(),
    arrival_start=0,
    arrival_stop=1,
    train_on="new",
    seed=0,
)


def model(w: Any, var: float = 1.0, steps: int = 0) -> dict[str, np.ndarray]:
    return {
        "w": np.asarray(w, np.float32),
        "bn.running_var": np.full(2, var, np.float32),
        "steps": np.array(steps),
    }


def options(name: str, **kwargs: Any) -> StrategyOptions:
    return TypeAdapter(StrategyOptions).validate_python({"name": name, **kwargs})


def record(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in state.items()})


def plan(nodes=(11, 12), rounds=(1,)):
    return {r: {n: INSTRUCTION for n in nodes} for r in rounds}


def start(strategy: Lifelong, server_round: int, state: dict[str, np.ndarray]) -> dict:
    """Configure ``server_round`` from ``state``: the messages by destination node."""
    set_task_identity(run_id=1, node_id=SUPERLINK_NODE_ID, task_id=1)
    messages = list(strategy.configure_train(server_round, record(state), ConfigRecord(), None))
    for i, m in enumerate(messages):
        assign_message_id(m, f"r{server_round}-m{i}")
    return {m.metadata.dst_node_id: m for m in messages}


def reply(message: Message, state: dict[str, np.ndarray], samples: float = 1.0, **extra) -> Message:
    content = RecordDict(
        {
            "arrays": record(state),
            "metrics": MetricRecord({"num-examples": samples, "train-loss": 0.5}),
            **extra,
        }
    )
    return Message(content, reply_to=message)


def run_round(strategy, server_round, state, updates, samples=None):
    """One round: every planned node replies with its update; the aggregate (or None)."""
    messages = start(strategy, server_round, state)
    samples = samples or [1.0] * len(updates)
    replies = [
        reply(messages[node], update, n)
        for node, update, n in zip(messages, updates, samples, strict=False)
    ]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return None if arrays is None else {k: v.numpy() for k, v in arrays.items()}


def through_checkpoint(strategy: Lifelong, server_round: int, state: dict) -> dict[str, Any]:
    """The strategy's state as a mid-trial checkpoint after ``server_round`` (with the global
    ``state``) stores it: encoded to the checkpoint file's bytes and decoded back."""
    saved = Checkpoint(
        trial_id="t",
        fingerprint="f",
        round=server_round,
        model=state,
        strategy=strategy.checkpoint_state(),
        nodes={},
        rng={},
        results={},
    )
    return decode(encode(saved), "test").strategy
