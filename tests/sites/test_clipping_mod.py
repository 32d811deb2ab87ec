"""The ClientApp's clipping mod on hand-made messages: a train message whose config carries
Flower's clipping norm has the update clipped (counters untouched), any other passes as is."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID

from fedll.federation.flower_private import assign_message_id, set_task_identity
from sites.privacy import clipping_mod
from strategies.privacy import KEY_CLIPPING

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
