"""Lifelong behaviour as one layer over any Flower strategy.

:class:`Lifelong` wraps an aggregation *rule*: any ``flwr.serverapp.strategy.Strategy`` (Flower's
FedAvgM, FedAdam, Krum, Bulyan, ..., a differential-privacy wrapper around one, or one of
fedll's own rules: :class:`~strategies.fedavg.PreciseFedAvg`,
:class:`~strategies.dynamic_aware.DynamicAware`).
Whatever the rule, the layer adds what a lifelong stream needs:

- **the arrival plan**: only the sites whose cases arrive in a round train, each with its own
  instruction. The rule's ``configure_train`` sees a grid of exactly those nodes, so the config
  it adds (FedProx's ``proximal-mu``, a DP wrapper's clipping norm) and the state it keeps
  (FedAvgM's and FedOpt's current arrays) are its own; the layer then gives each message its
  site's instruction (what the rule sets wins over the instruction's defaults);
- **the update checks**: replies are sorted by :func:`strategies.replies.triage` into failed
  (an error, or no reply before the timeout), rejected (Flower's reply contract broken; not
  finite, or not shaped and typed like the global model; a check of the rule, ``problem``) and
  accepted. Flower raises on a round with one bad reply; the layer rejects it and gives the
  rule the rest;
- **the accounting** of failed and rejected sites per round, for the results;
- **integer counters kept by max** (Flower's rules average every array, so BatchNorm's
  ``num_batches_tracked`` would become a float mean), every tensor cast back to the global
  model's dtype, and a rule's aggregate that is not finite or not shaped like the model
  refused (the model is kept);
- **FedBN's** ``norm: local``: the sites keep their normalisation layers (``local-norm``).

A rule may declare ``reply_arrays`` (ArrayRecord names it reads from a reply besides the model
``arrays``, e.g. SCAFFOLD's control variates) and ``problem(reply, state, samples)`` (why it
cannot use an update); the layer forwards each accepted reply with the model, the MetricRecord,
the ConfigRecords and those records only, as Flower's contract has it.
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
from flwr.serverapp.strategy import Strategy

from fedll.config.instruction import TrainInstruction
from fedll.federation.messages import CONFIG, MODEL, WEIGHT
from fedll.models.inspection import ModelLayout
from strategies.aggregation import State, update_problem, weighted_average
from strategies.replies import Triage, Update, triage
from strategies.rule_state import restore_rule_state, rule_chain, rule_state

logger = logging.getLogger(__name__)

Plan = Mapping[int, Mapping[int, TrainInstruction]]
"""round -> {node id: that node's instruction}."""

VARIANCE = "running_var"
"""The name ending of BatchNorm's running variance (kept >= 0 by :func:`conform`)."""


class Arrivals:
    """The grid as a rule sees it in a round: exactly the arriving nodes (a rule samples
    from ``get_node_ids``); everything else is the real grid's."""

    def __init__(self, grid: Grid | None, nodes: Sequence[int]) -> None:
        self._grid = grid
        self._nodes = list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class Lifelong(Strategy):
    """A Flower strategy for a lifelong stream: ``rule`` aggregates, the layer does the rest.

    Parameters
    ----------
    rule:
        the aggregation rule, any Flower ``Strategy`` whose records are ``arrays`` and
        ``config`` and whose weights are ``num-examples`` (the registry builds them so).
    plan:
        round -> {node id: that node's instruction}; a round with no entry trains nobody and
        keeps the model.
    layout:
        the model's parameter groups, kernel banks and trainable keys.
    site_of:
        node id -> site name, for the failure log and the results.
    norm:
        ``"average"``: normalisation layers are aggregated by the rule like any weight;
        ``"local"`` (FedBN): each site keeps its own and overlays them on the model it
        receives. The server's copy, used for evaluation and by a site's first round, is
        still what the rule made of what the round's sites sent.
    buffers:
        ``"rule"``: the rule aggregates the floating buffers (BatchNorm's running statistics)
        like the weights; ``"average"``: they take the sample-weighted average of the
        accepted updates whatever the rule made of them. A rule with a server step (FedAvgM,
        FedOpt, q-FedAvg) needs ``"average"``: a momentum or adaptive step on a running
        variance is no estimate of anything (and can make it negative), so, as NVFlare's
        FedOpt does, only parameters take the server step.
    """

    def __init__(
        self,
        rule: Strategy,
        plan: Plan,
        layout: ModelLayout,
        site_of: Mapping[int, str],
        norm: str = "average",
        buffers: str = "rule",
    ) -> None:
        if norm not in ("average", "local"):
            raise ValueError(f"norm: expected 'average' or 'local', got {norm!r}")
        if buffers not in ("rule", "average"):
            raise ValueError(f"buffers: expected 'rule' or 'average', got {buffers!r}")
        self.average_buffers = buffers == "average"
        self.rule = rule
        self.plan = plan
        self.layout = layout
        self.site_of = site_of
        self.local_norm = norm == "local"
        self.failures: dict[int, list[str]] = {}
        self.rejected: dict[int, list[str]] = {}
        self.current: dict[str, np.ndarray] = {}
        self.sent: list[Message] = []
        self.accepted: list[Update] = []
        # rounds already run before Flower's start() loop began (a trial resumed from a
        # checkpoint): Flower's round r is the stream's round r + round_offset
        self.round_offset = 0
        # execution.round_timeout: a train message lives that long (its TTL), so the SuperLink
        # refuses a reply that comes later; None: Flower's default TTL
        self.round_timeout: float | None = None

    # -- the strategy's state, for checkpoints ------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        """What the strategy keeps across rounds (a checkpoint stores it): JSON values and
        arrays: the layer's accounting and the rule's state
        (:func:`strategies.rule_state.rule_state`)."""
        return {
            "failures": {str(k): v for k, v in self.failures.items()},
            "rejected": {str(k): v for k, v in self.rejected.items()},
            "rule": rule_state(self.rule),
        }

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`checkpoint_state`."""
        self.failures = {int(k): list(v) for k, v in state["failures"].items()}
        self.rejected = {int(k): list(v) for k, v in state["rejected"].items()}
        restore_rule_state(self.rule, state["rule"])

    # -- a round ------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self.current = {k: v.numpy() for k, v in arrays.items()}
        self.sent = []
        arriving = self.plan.get(server_round, {})
        if not arriving:
            return []
        config["local-norm"] = self.local_norm
        configured = self.rule.configure_train(
            server_round, floating(arrays), config, Arrivals(grid, list(arriving))
        )
        by_node = {m.metadata.dst_node_id: m for m in configured}
        for node_id, instruction in arriving.items():
            if node_id not in by_node:  # the rule chose not to train this site this round
                continue
            content = by_node[node_id].content
            node_config = ConfigRecord(
                {**instruction.to_config(), **dict(content[CONFIG]), "server-round": server_round}
            )
            # the sites get the model as it is (the rule saw its counters as floats)
            records = {**dict(content.items()), MODEL: arrays, CONFIG: node_config}
            self.sent.append(
                Message(
                    content=RecordDict(records),
                    message_type=MessageType.TRAIN,
                    dst_node_id=node_id,
                    ttl=self.round_timeout,
                )
            )
        return self.sent  # the grid gives each its message id when it pushes it

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in self.sent}
        allowed = {MODEL, *declared(self.rule, "reply_arrays", ())}
        outcome = triage(replies, sent, self.site_of, WEIGHT, self.problem, allowed)
        # a DP rule over a fixed n releases even when no update arrived (else the round's
        # silence would tell that none did); it was configured this round
        releases = bool(self.sent) and declared(self.rule, "releases_without_updates", False)
        self._record(server_round, outcome, releases)
        self.accepted = outcome.accepted
        if not outcome.accepted and not releases:
            return None, None
        arrays, metrics = self.rule.aggregate_train(
            server_round, [_forwarded(u.reply, allowed) for u in outcome.accepted]
        )
        if arrays is None:
            logger.warning(
                "round %d: %s aggregated none of the %d accepted updates; the global model is kept",
                server_round,
                type(self.rule).__name__,
                len(outcome.accepted),
            )
            return None, metrics
        merged, problem = conform(
            {k: v.numpy() for k, v in arrays.items()},
            self.current,
            [u.state for u in outcome.accepted],
        )
        if problem is None and self.average_buffers:
            merged.update(self._averaged_buffers(outcome.accepted))
        if problem is not None:
            logger.error(
                "round %d: the aggregate of %s is unusable (%s); the global model is kept",
                server_round,
                type(self.rule).__name__,
                problem,
            )
            return None, metrics
        return ArrayRecord({k: Array(v) for k, v in merged.items()}), metrics

    def _averaged_buffers(self, updates: Sequence[Update]) -> dict[str, np.ndarray]:
        """The floating buffers (not parameters) of ``updates``, sample-weighted."""
        names = [
            name
            for name, value in self.current.items()
            if name not in self.layout.trainable and np.issubdtype(value.dtype, np.floating)
        ]
        if not names:
            return {}
        states = [{name: u.state[name] for name in names} for u in updates]
        return weighted_average(states, [u.samples for u in updates], self.layout.groups)

    def problem(self, reply: Message, state: State, samples: float) -> str | None:
        """Why an update must be rejected, or None: its sample count must be finite and
        positive, its arrays those of the global model (names, shapes, dtypes), finite, and
        the rule must be able to use it (its own ``problem``, where it has one)."""
        if not (np.isfinite(samples) and samples > 0):
            return f"{WEIGHT} is {samples}"
        if (problem := update_problem(self.current, state)) is not None:
            return problem
        check = declared(self.rule, "problem", None)
        return None if check is None else check(reply, state, samples)

    def _record(self, server_round: int, outcome: Triage, releases: bool = False) -> None:
        """Keep the round's failed and rejected sites (for the results) and log them
        (``releases``: the rule aggregates even a round without a usable update)."""
        self.failures[server_round] = [site for site, _ in outcome.failed]
        self.rejected[server_round] = [site for site, _ in outcome.rejected]
        for site, reason in outcome.failed:
            logger.warning("round %d: site %s failed: %s", server_round, site, reason)
        for site, reason in outcome.rejected:
            logger.warning("round %d: update of site %s rejected: %s", server_round, site, reason)
        if not outcome.accepted and (outcome.failed or outcome.rejected):
            logger.warning(
                "round %d: no usable update (%d failed, %d rejected); %s",
                server_round,
                len(outcome.failed),
                len(outcome.rejected),
                "the rule releases without one" if releases else "the global model is kept",
            )

    # -- no federated evaluation: the ServerApp evaluates the global model itself --------

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        logger.info(
            "lifelong layer over %s (norm: %s)",
            type(self.rule).__name__,
            "local" if self.local_norm else "average",
        )
        self.rule.summary()


def _forwarded(reply: Message, arrays: set[str]) -> Message:
    """``reply`` as the rule is given it: the ArrayRecords in ``arrays`` (the model's
    integer counters as floats: :func:`floating`), the MetricRecord and the ConfigRecords
    (Flower's contract: one ArrayRecord, one MetricRecord)."""
    content = reply.content
    model = MODEL if MODEL in content.array_records else next(iter(content.array_records))
    kept = {
        name: floating(record) if name == model else record
        for name, record in content.items()
        if not isinstance(record, ArrayRecord) or name in arrays or name == model
    }
    reply.content = RecordDict(kept)
    return reply


def floating(record: ArrayRecord) -> ArrayRecord:
    """``record`` with its integer arrays (counters) as float64: Flower's rules compute on
    every array in place (q-FedAvg cannot scale an int64 array); :func:`conform` puts the
    counters back. Floating arrays are the same objects."""
    if all(np.issubdtype(np.dtype(a.dtype), np.floating) for a in record.values()):
        return record
    return ArrayRecord(
        {
            k: a if np.issubdtype(np.dtype(a.dtype), np.floating)
            else Array(a.numpy().astype(np.float64))
            for k, a in record.items()
        }
    )  # fmt: skip


def conform(
    merged: Mapping[str, np.ndarray], current: State, updates: Sequence[State]
) -> tuple[dict[str, np.ndarray], str | None]:
    """A rule's aggregate made a model state like ``current``: integer tensors (counters)
    take the largest value of the ``updates`` (a rule would average them; without any, a DP
    release of noise alone, they stay as in ``current``), every tensor the dtype of
    ``current``, a running variance no value below 0 (noise, DP's included, can push one
    there; BatchNorm would divide by the root of it). Returns the state and None, or why it
    cannot be one (a name missing or extra, a shape changed, a value not finite)."""
    out: dict[str, np.ndarray] = {}
    for name, ref in current.items():
        ref = np.asarray(ref)
        if name not in merged:
            return {}, f"{name!r} missing"
        if np.issubdtype(ref.dtype, np.floating):
            out[name] = np.asarray(merged[name], dtype=ref.dtype)
            if name.endswith(VARIANCE) and np.all(np.isfinite(out[name])):
                out[name] = np.maximum(out[name], 0)
        elif not updates:  # a release without updates (DP over a fixed n): counters stay
            out[name] = ref.copy()
        else:
            stacked = np.stack([np.asarray(u[name]) for u in updates])
            out[name] = np.asarray(stacked.max(axis=0), dtype=ref.dtype)
    return out, update_problem(current, out) or _extra(merged, current)


def _extra(merged: Mapping[str, np.ndarray], current: State) -> str | None:
    extra = sorted(set(merged) - set(current))
    return f"unexpected {extra[0]!r}" if extra else None


def declared(rule: Strategy, name: str, default: Any) -> Any:
    """What the outermost strategy of :func:`strategies.rule_state.rule_chain` that has
    ``name`` declares (``reply_arrays``, ``problem``): a wrapper passes on what the rule it
    wraps reads."""
    for part in rule_chain(rule):
        if hasattr(part, name):
            return getattr(part, name)
    return default
