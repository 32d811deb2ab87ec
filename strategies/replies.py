"""Sorting a round's replies: failed, rejected and accepted updates (pure, no aggregation).

A site is known by the message it was sent: a reply names it through
``reply_to_message_id``, never through its ``src_node_id`` (when a SuperNode is offline the
SuperLink itself sends the error reply, from node 1). A planned site *failed* when its reply
is an error (the ClientApp raised, or the SuperLink answered for it) or when no reply came
before the timeout. A reply with content is *rejected* when it breaks Flower's reply contract
(:func:`contract_problem`, what ``FedAvg._check_and_log_replies(validate=True)`` requires:
one ArrayRecord, one MetricRecord holding the sample count as one number, the same metric
keys as the round's other replies), cannot be read as an update, or fails a check of the
strategy (``problem``); it is *accepted* otherwise. Flower raises on such a round; fedll
rejects the offending replies and aggregates the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from fedll.federation.messages import MODEL
from strategies.aggregation import State


@dataclass(frozen=True)
class Update:
    """An accepted reply: who sent it, its state and its sample count."""

    site: str
    state: dict[str, np.ndarray]
    samples: float
    reply: Message


@dataclass(frozen=True)
class Triage:
    """A round's replies sorted; ``failed`` and ``rejected`` pair a site with the reason."""

    accepted: list[Update] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


Problem = Callable[[Message, State, float], "str | None"]


def contract_problem(
    reply: Message, weighted_by_key: str, allowed: Collection[str] = ()
) -> str | None:
    """Why a content reply breaks Flower's reply contract for a train round, or None.

    Flower's: one ArrayRecord (the model). A rule that reads more from a reply names the
    other ArrayRecords it takes (``allowed``); the model is then the one called ``arrays``."""
    content = reply.content
    records = content.array_records
    if len(records) != 1:
        unexpected = sorted(set(records) - set(allowed) - {MODEL})
        if not records or unexpected or MODEL not in records:
            what = f" ({', '.join(repr(name) for name in records)})" if records else ""
            return f"expected one ArrayRecord, got {len(records)}{what}"
    if len(content.metric_records) != 1:
        return f"expected one MetricRecord, got {len(content.metric_records)}"
    metrics = next(iter(content.metric_records.values()))
    if weighted_by_key not in metrics:
        return f"its MetricRecord has no {weighted_by_key!r}"
    if not isinstance(metrics[weighted_by_key], (int, float)):
        return f"{weighted_by_key!r} is not one number"
    return None


def read_update(reply: Message, weighted_by_key: str) -> tuple[dict[str, np.ndarray], float]:
    """The state (the one ArrayRecord) and the sample count (from the one MetricRecord) of a
    reply that keeps the contract."""
    records = reply.content.array_records
    arrays = records[MODEL] if MODEL in records else next(iter(records.values()))
    metrics = next(iter(reply.content.metric_records.values()))
    return {k: v.numpy() for k, v in arrays.items()}, float(metrics[weighted_by_key])


def triage(
    replies: Iterable[Message],
    sent: Mapping[str, int],
    site_of: Mapping[int, str],
    weighted_by_key: str,
    problem: Problem,
    allowed: Collection[str] = (),
) -> Triage:
    """Sort ``replies`` to the messages in ``sent`` (message id -> destination node).

    ``allowed``: ArrayRecords a reply may carry besides the model (:func:`contract_problem`).

    ``problem`` says why a read update must be rejected (or None). Sites are named by
    ``site_of`` (node id -> site), the node id where it has no entry; a reply that answers no
    message in ``sent`` is named by its sender.
    """

    def site(node: int) -> str:
        return site_of.get(node, str(node))

    result = Triage()
    answered: set[int] = set()
    metric_keys: set[str] | None = None
    for message in replies:
        node = sent.get(message.metadata.reply_to_message_id, message.metadata.src_node_id)
        answered.add(node)
        if message.has_error():
            result.failed.append((site(node), f"raised: {message.error.reason}"))
            continue
        reason = contract_problem(message, weighted_by_key, allowed)
        if reason is None:
            keys = set(next(iter(message.content.metric_records.values())).keys())
            if metric_keys is not None and keys != metric_keys:
                reason = f"its metric keys {sorted(keys)} differ from {sorted(metric_keys)}"
        if reason is None:
            try:
                state, samples = read_update(message, weighted_by_key)
            except (KeyError, TypeError, ValueError) as error:
                reason = f"unreadable reply ({error})"
        if reason is None:
            reason = problem(message, state, samples)
        if reason is None:
            metric_keys = keys
            result.accepted.append(Update(site(node), state, samples, message))
        else:
            result.rejected.append((site(node), reason))
    result.failed.extend(
        (site(node), "no reply before the timeout")
        for node in dict.fromkeys(sent.values())
        if node not in answered
    )
    return result
