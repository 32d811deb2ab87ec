"""Sorting a round's replies into failed, rejected and accepted updates."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID

from fedll.inprocess import _assign_message_id, _set_task_identity
from strategies.replies import triage

SITES = {1: "a", 2: "b", 3: "c", 4: "d"}


def sent(node: int) -> Message:
    _set_task_identity(run_id=1, node_id=SUPERLINK_NODE_ID, task_id=1)
    message = Message(RecordDict(), dst_node_id=node, message_type="train")
    _assign_message_id(message, f"to-{node}")
    return message


def update(node: int, value: float, samples: float | None = 1.0) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.full(2, value, np.float32))})})
    if samples is not None:
        content["metrics"] = MetricRecord({"num-examples": samples})
    return Message(content, reply_to=sent(node))


def read(message: Message):
    state = {k: v.numpy() for k, v in message.content["arrays"].items()}
    return state, float(message.content["metrics"]["num-examples"])


def problem(message, state, samples):
    return "negative" if state["w"][0] < 0 else None


def test_replies_are_sorted_and_named_by_site():
    replies = [
        update(1, 1.0),
        update(2, -1.0),  # the strategy's check rejects it
        update(3, 2.0, samples=None),  # unreadable: no metrics
        Message(Error(code=2, reason="boom"), reply_to=sent(4)),
        update(9, 3.0),  # a node the plan does not know: named by its id
    ]
    outcome = triage(replies, planned=[1, 2, 3, 4, 5], site_of=SITES, read=read, problem=problem)
    assert [(u.site, u.samples) for u in outcome.accepted] == [("a", 1.0), ("9", 1.0)]
    np.testing.assert_array_equal(outcome.accepted[0].state["w"], [1.0, 1.0])
    assert outcome.rejected[0] == ("b", "negative")
    assert outcome.rejected[1][0] == "c" and outcome.rejected[1][1].startswith("unreadable reply")
    assert outcome.failed == [("d", "raised: boom"), ("5", "no reply before the timeout")]


def test_no_replies_fail_every_planned_site():
    outcome = triage([], planned=[1, 2], site_of=SITES, read=read, problem=problem)
    assert outcome.accepted == [] and outcome.rejected == []
    assert [site for site, _ in outcome.failed] == ["a", "b"]
