"""FedAvg for a lifelong stream: only the sites whose cases arrive this round train.

A narrow subclass of Flower's ``FedAvg``: ``configure_train`` addresses the arriving sites
with their own instruction (which of their cases arrived); ``aggregate_train`` sorts the
replies with :func:`strategies.replies.triage` into failed (an error reply, or no reply before
the timeout), rejected (an update that is not finite or not shaped and typed like the global
model) and accepted, and merges the accepted ones with :meth:`LifelongFedAvg.merge` (here
:func:`strategies.aggregation.weighted_average`). When no update is accepted the round keeps
the previous model and logs so. Variants override :meth:`merge` or :meth:`problem`, or add a
key to the training config; the ``start()`` loop is Flower's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
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

from fedll.config.instruction import TrainInstruction
from fedll.models.inspection import ModelLayout
from strategies.aggregation import State, update_problem, weighted_average
from strategies.replies import Triage, Update, triage

logger = logging.getLogger(__name__)

Plan = Mapping[int, Mapping[int, TrainInstruction]]
"""round -> {node id: that node's instruction}."""


class LifelongFedAvg(FedAvg):
    """FedAvg over the sites that arrive in each round.

    Parameters
    ----------
    plan:
        round -> {node id: that node's instruction}; a round with no entry trains nobody and
        keeps the model.
    layout:
        the model's parameter groups, kernel banks and trainable keys.
    site_of:
        node id -> site name, for the failure log and the results.
    norm:
        ``"average"``: normalisation layers are averaged like any weight; ``"local"``
        (FedBN): each site keeps its own and overlays them on the model it receives. The
        server's copy, used for evaluation and by a site's first round, is still the average
        of what the round's sites sent.
    """

    def __init__(
        self,
        plan: Plan,
        layout: ModelLayout,
        site_of: Mapping[int, str],
        norm: str = "average",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("fraction_evaluate", 0.0)
        super().__init__(**kwargs)
        if norm not in ("average", "local"):
            raise ValueError(f"norm: expected 'average' or 'local', got {norm!r}")
        self.plan = plan
        self.layout = layout
        self.site_of = site_of
        self.local_norm = norm == "local"
        self.failures: dict[int, list[str]] = {}
        self.rejected: dict[int, list[str]] = {}
        self.current: dict[str, np.ndarray] = {}
        self.sent: list[Message] = []
        # rounds already run before Flower's start() loop began (a trial resumed from a
        # checkpoint): Flower's round r is the stream's round r + round_offset
        self.round_offset = 0

    def checkpoint_state(self) -> dict[str, Any]:
        """What the strategy keeps across rounds (a checkpoint stores it): JSON values and
        arrays. Variants with more state extend it."""
        return {
            "failures": {str(k): v for k, v in self.failures.items()},
            "rejected": {str(k): v for k, v in self.rejected.items()},
        }

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`checkpoint_state`."""
        self.failures = {int(k): list(v) for k, v in state["failures"].items()}
        self.rejected = {int(k): list(v) for k, v in state["rejected"].items()}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self.current = {k: v.numpy() for k, v in arrays.items()}
        config["local-norm"] = self.local_norm
        messages = []
        for node_id, instruction in self.plan.get(server_round, {}).items():
            # what the strategy sets (local-norm, proximal-mu) overrides the instruction's default
            node_config = ConfigRecord(
                {**instruction.to_config(), **dict(config), "server-round": server_round}
            )
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: node_config})
            messages.append(
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node_id)
            )
        self.sent = messages  # the grid gives each its message id when it pushes it
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in self.sent}
        outcome = triage(replies, sent, self.site_of, self.weighted_by_key, self.problem)
        self._record(server_round, outcome)
        if not outcome.accepted:
            return None, None
        merged = self.merge(server_round, outcome.accepted)
        metrics = self.train_metrics_aggr_fn(
            [u.reply.content for u in outcome.accepted], self.weighted_by_key
        )
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in merged.items()}), metrics

    def problem(self, reply: Message, state: State, samples: float) -> str | None:
        """Why an update must be rejected, or None: its sample count must be finite and
        positive, its arrays those of the global model (names, shapes, dtypes), finite."""
        if not (np.isfinite(samples) and samples > 0):
            return f"{self.weighted_by_key} is {samples}"
        return update_problem(self.current, state)

    def merge(self, server_round: int, updates: Sequence[Update]) -> dict[str, np.ndarray]:
        """The new global state from the accepted updates: the sample-weighted mean."""
        return weighted_average(
            [u.state for u in updates], [u.samples for u in updates], self.layout.groups
        )

    def _record(self, server_round: int, outcome: Triage) -> None:
        """Keep the round's failed and rejected sites (for the results) and log them."""
        self.failures[server_round] = [site for site, _ in outcome.failed]
        self.rejected[server_round] = [site for site, _ in outcome.rejected]
        for site, reason in outcome.failed:
            logger.warning("round %d: site %s failed: %s", server_round, site, reason)
        for site, reason in outcome.rejected:
            logger.warning("round %d: update of site %s rejected: %s", server_round, site, reason)
        if not outcome.accepted and (outcome.failed or outcome.rejected):
            logger.warning(
                "round %d: no usable update (%d failed, %d rejected); the global model is kept",
                server_round,
                len(outcome.failed),
                len(outcome.rejected),
            )
