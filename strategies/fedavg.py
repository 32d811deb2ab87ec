"""FedAvg for a lifelong stream: only the sites whose cases arrive this round train.

A narrow subclass of Flower's ``FedAvg``: ``configure_train`` addresses the arriving sites
with their own instruction (which of their cases arrived); ``aggregate_train`` sorts the
replies into failed (an error reply, or no reply before the timeout), rejected (an update
that is not finite or not shaped and typed like the global model) and accepted, and merges
the accepted ones with :meth:`LifelongFedAvg.merge` (here
:func:`strategies.aggregation.weighted_average`). When no update is accepted the round keeps
the previous model and logs so. Variants override :meth:`merge` or :meth:`problem`, or add a
key to the training config; the ``start()`` loop is Flower's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
from torch import nn

from fedll.models import kernel_banks, parameter_groups
from strategies.aggregation import State, update_problem, weighted_average

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelLayout:
    """What strategies need to know about the model's state keys.

    groups: key -> parameter group (``fedll.models.parameter_groups``);
    banks: kernel-bank key -> (the dynamic layer whose attention mixes it, that attention's
    shape per sample) (``fedll.models.kernel_banks``);
    trainable: the keys that are parameters (not buffers such as running statistics).
    """

    groups: Mapping[str, str]
    banks: Mapping[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    trainable: frozenset[str] = frozenset()

    @classmethod
    def of(cls, model: nn.Module) -> ModelLayout:
        return cls(
            groups=parameter_groups(model),
            banks=kernel_banks(model),
            trainable=frozenset(name for name, _ in model.named_parameters()),
        )


@dataclass(frozen=True)
class Update:
    """An accepted reply: who sent it, its state and its sample count."""

    site: str
    state: dict[str, np.ndarray]
    samples: float
    reply: Message


class LifelongFedAvg(FedAvg):
    """FedAvg over the sites that arrive in each round.

    Parameters
    ----------
    plan:
        round -> {node id: that node's instruction (flat config)}; a round with no entry
        trains nobody and keeps the model.
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
        plan: Mapping[int, Mapping[int, Mapping[str, Any]]],
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
        self.attention: dict[int, dict[str, dict[str, list[float]]]] = {}
        self.current: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = {k: v.numpy() for k, v in arrays.items()}
        config["local-norm"] = self.local_norm
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
        replies = list(replies)
        valid, errors = self._check_and_log_replies(replies, is_train=True, validate=False)
        failed = [(self._site(m), f"raised: {m.error.reason}") for m in errors]
        answered = {m.metadata.src_node_id for m in replies}
        failed += [
            (self.site_of.get(node, str(node)), "no reply before the timeout")
            for node in self.plan.get(server_round, {})
            if node not in answered
        ]
        accepted: list[Update] = []
        rejected: list[tuple[str, str]] = []
        for m in valid:
            site = self._site(m)
            try:
                state = {k: v.numpy() for k, v in m.content[self.arrayrecord_key].items()}
                samples = float(m.content["metrics"][self.weighted_by_key])
            except (KeyError, TypeError, ValueError) as error:
                rejected.append((site, f"unreadable reply ({error})"))
                continue
            problem = self.problem(m, state, samples)
            if problem is None:
                accepted.append(Update(site, state, samples, m))
            else:
                rejected.append((site, problem))
        self.failures[server_round] = [site for site, _ in failed]
        self.rejected[server_round] = [site for site, _ in rejected]
        for site, reason in failed:
            logger.warning("round %d: site %s failed: %s", server_round, site, reason)
        for site, reason in rejected:
            logger.warning("round %d: update of site %s rejected: %s", server_round, site, reason)
        if not accepted:
            if failed or rejected:
                logger.warning(
                    "round %d: no usable update (%d failed, %d rejected); the global model is kept",
                    server_round,
                    len(failed),
                    len(rejected),
                )
            return None, None
        merged = self.merge(server_round, accepted)
        self.attention[server_round] = {
            u.site: {
                k: list(v) for k, v in u.reply.content.get("attention", ConfigRecord()).items()
            }
            for u in accepted
        }
        metrics = self.train_metrics_aggr_fn(
            [u.reply.content for u in accepted], self.weighted_by_key
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

    def _site(self, message: Message) -> str:
        node = message.metadata.src_node_id
        return self.site_of.get(node, str(node))
