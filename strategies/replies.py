"""Sorting a round's replies: failed, rejected and accepted updates (pure, no aggregation).

A planned site *failed* when its reply is an error (the ClientApp raised) or when no reply
came before the timeout; a reply with content is *rejected* when it cannot be read as an
update or breaks a check of the strategy (``problem``), and *accepted* otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

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


ReadUpdate = Callable[[Message], tuple[State, float]]
Problem = Callable[[Message, State, float], "str | None"]


def triage(
    replies: Iterable[Message],
    planned: Collection[int],
    site_of: Mapping[int, str],
    read: ReadUpdate,
    problem: Problem,
) -> Triage:
    """Sort ``replies`` to the nodes in ``planned``.

    ``read`` turns a reply into (state, sample count), raising KeyError, TypeError or
    ValueError when it cannot; ``problem`` says why a read update must be rejected (or None).
    Sites are named by ``site_of`` (node id -> site), the node id where it has no entry.
    """
    replies = list(replies)

    def site(node: int) -> str:
        return site_of.get(node, str(node))

    result = Triage()
    answered = {m.metadata.src_node_id for m in replies}
    for message in replies:
        sender = site(message.metadata.src_node_id)
        if message.has_error():
            result.failed.append((sender, f"raised: {message.error.reason}"))
            continue
        try:
            state, samples = read(message)
        except (KeyError, TypeError, ValueError) as error:
            result.rejected.append((sender, f"unreadable reply ({error})"))
            continue
        reason = problem(message, state, samples)
        if reason is None:
            result.accepted.append(Update(sender, dict(state), samples, message))
        else:
            result.rejected.append((sender, reason))
    result.failed.extend(
        (site(node), "no reply before the timeout") for node in planned if node not in answered
    )
    return result
