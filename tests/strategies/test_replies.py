"""Sorting a round's replies into failed, rejected and accepted updates, by Flower's reply
contract (``FedAvg._check_and_log_replies(validate=True)``) but rejecting instead of raising."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID

from fedll.federation.flower_private import assign_message_id, set_task_identity
from strategies.replies import triage

SITES = {11: "a", 12: "b", 13: "c", 14: "d", 15: "e"}
KEY = "num-examples"


def sent(node: int) -> Message:
    set_task_identity(run_id=1, node_id=SUPERLINK_NODE_ID, task_id=1)
    message = Message(RecordDict(), dst_node_id=node, message_type="train")
    assign_message_id(message, f"to-{node}")
    return message


def update(node: int, value: float, **metrics: object) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.full(2, value, np.float32))})})
    content["metrics"] = MetricRecord({KEY: 1.0, **metrics})  # type: ignore[dict-item]
    return Message(content, reply_to=sent(node))


def outbox(*nodes: int) -> dict[str, int]:
    return {f"to-{n}": n for n in nodes}


def problem(message, state, samples):
    return "negative" if state["w"][0] < 0 else None


def test_replies_are_sorted_and_named_by_the_message_they_answer():
    offline = Message(Error(code=2, reason="node offline"), reply_to=sent(14))
    offline.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID  # the SuperLink answered
    replies = [
        update(11, 1.0),
        update(12, -1.0),  # the strategy's check rejects it
        Message(Error(code=2, reason="boom"), reply_to=sent(13)),
        offline,
    ]
    outcome = triage(replies, outbox(11, 12, 13, 14, 15), SITES, KEY, problem)
    assert [(u.site, u.samples) for u in outcome.accepted] == [("a", 1.0)]
    np.testing.assert_array_equal(outcome.accepted[0].state["w"], [1.0, 1.0])
    assert outcome.rejected == [("b", "negative")]
    # the offline node is site d (not a site "1"), and counted once
    assert outcome.failed == [
        ("c", "raised: boom"),
        ("d", "raised: node offline"),
        ("e", "no reply before the timeout"),
    ]


def test_a_reply_that_breaks_the_contract_is_rejected_not_raised():
    two_metrics = update(12, 2.0)
    two_metrics.content["more"] = MetricRecord({KEY: 1.0})
    no_arrays = Message(RecordDict({"metrics": MetricRecord({KEY: 1.0})}), reply_to=sent(13))
    listed = update(14, 2.0)
    listed.content["metrics"] = MetricRecord({KEY: [1.0, 2.0]})
    replies = [
        update(11, 1.0, loss=0.5),
        two_metrics,
        no_arrays,
        listed,
        update(15, 3.0),  # no "loss": its metric keys differ from the round's
    ]
    outcome = triage(replies, outbox(11, 12, 13, 14, 15), SITES, KEY, problem)
    assert [u.site for u in outcome.accepted] == ["a"]
    reasons = dict(outcome.rejected)
    assert reasons["b"] == "expected one MetricRecord, got 2"
    assert reasons["c"] == "expected one ArrayRecord, got 0"
    assert reasons["d"] == "'num-examples' is not one number"
    assert reasons["e"].startswith("its metric keys ['num-examples'] differ")
    assert outcome.failed == []


def test_the_sample_count_comes_from_the_one_metric_record_whatever_its_name():
    reply = Message(
        RecordDict(
            {
                "weights": ArrayRecord({"w": Array(np.ones(2, np.float32))}),
                "train": MetricRecord({KEY: 7}),
            }
        ),
        reply_to=sent(11),
    )
    outcome = triage([reply], outbox(11), SITES, KEY, problem)
    assert outcome.accepted[0].samples == 7.0


def test_no_replies_fail_every_planned_site():
    outcome = triage([], outbox(11, 12), SITES, KEY, problem)
    assert outcome.accepted == [] and outcome.rejected == []
    assert [site for site, _ in outcome.failed] == ["a", "b"]
