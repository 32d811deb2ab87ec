"""FedAvg for a lifelong stream: only the sites whose cases arrive this round train.

A narrow subclass of Flower's ``FedAvg``: ``configure_train`` addresses the arriving
sites with their own instruction (which of their cases arrived), ``aggregate_train``
averages with :func:`strategies.aggregation.weighted_average` (counters kept, dtypes
kept) and records which sites failed. The ``start()`` loop is Flower's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from strategies.aggregation import weighted_average

logger = logging.getLogger(__name__)


class LifelongFedAvg(FedAvg):
    """FedAvg over the sites that arrive in each round.

    Parameters
    ----------
    plan:
        round -> {node id: that node's instruction (flat config)}; a round with no entry
        trains nobody and keeps the model.
    groups:
        parameter name -> group (``fedll.models.parameter_groups``).
    site_of:
        node id -> site name, for the failure log.
    """

    def __init__(
        self,
        plan: Mapping[int, Mapping[int, Mapping[str, Any]]],
        groups: Mapping[str, str],
        site_of: Mapping[int, str],
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("fraction_evaluate", 0.0)
        super().__init__(**kwargs)
        self.plan = plan
        self.groups = groups
        self.site_of = site_of
        self.failures: dict[int, list[str]] = {}
        self.attention: dict[int, dict[str, dict[str, list[float]]]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = []
        for node_id, instruction in self.plan.get(server_round, {}).items():
            node_config = ConfigRecord(
                {**dict(config), **instruction, "server-round": server_round}
            )
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: node_config})
            messages.append(
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node_id)
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, errors = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        self.failures[server_round] = [
            self.site_of.get(m.metadata.src_node_id, "?") for m in errors
        ]
        for m in errors:
            logger.warning(
                "round %d: site %s failed: %s",
                server_round,
                self.site_of.get(m.metadata.src_node_id, "?"),
                m.error.reason,
            )
        if not valid:
            if errors:
                logger.warning(
                    "round %d: every arriving site failed; the model is kept", server_round
                )
            return None, None
        states = [m.content[self.arrayrecord_key] for m in valid]
        states_np = [{k: v.numpy() for k, v in s.items()} for s in states]
        weights = [float(m.content["metrics"][self.weighted_by_key]) for m in valid]
        merged = weighted_average(states_np, weights, self.groups)
        self.attention[server_round] = {
            self.site_of.get(m.metadata.src_node_id, "?"): {
                k: list(v) for k, v in m.content.get("attention", ConfigRecord()).items()
            }
            for m in valid
        }
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return ArrayRecord({k: Array(v) for k, v in merged.items()}), metrics
