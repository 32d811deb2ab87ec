"""A round's time limit (``execution.round_timeout``) over any Flower ``Grid``.

Flower's SuperLink answers a message to a node that is offline at once with an error
(``NODE_UNAVAILABLE``), so a site whose SuperNode is restarting would miss every round that
starts before it is back, however long the round may take. Under a round timeout the round
waits for its sites: :class:`TimedGrid` first waits (within the timeout) until the round's
destination nodes are connected, then sends and collects the replies for the rest of it.
A reply that has not come when the time is up is never pulled (the strategy records the site
failed for the round); with the train messages' TTL set to the timeout
(:attr:`strategies.lifelong.Lifelong.round_timeout`) the SuperLink refuses it when it comes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedll.federation.flower_private import Run

logger = logging.getLogger(__name__)

POLL_S = 1.0
"""How often the connected nodes are asked for while a round waits for one."""


class TimedGrid(Grid):
    """``grid`` whose ``send_and_receive`` spends its ``timeout`` on waiting for the
    messages' destinations to connect, then on their replies; everything else is ``grid``'s.
    ``site_of`` names nodes in the log."""

    def __init__(self, grid: Grid, site_of: Mapping[int, str], poll_s: float = POLL_S) -> None:
        self._grid = grid
        self._site_of = site_of
        self._poll_s = poll_s

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait_connected({m.metadata.dst_node_id for m in messages}, deadline)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self._grid.send_and_receive(messages, timeout=left)

    def _wait_connected(self, nodes: set[int], deadline: float | None) -> None:
        """Until every node of ``nodes`` is connected, or ``deadline`` (monotonic) passes."""
        missing = nodes - set(self._grid.get_node_ids())
        if not missing:
            return
        names = ", ".join(sorted(self._site_of.get(n, str(n)) for n in missing))
        logger.warning("waiting for site(s) %s to connect (within the round's timeout)", names)
        while missing and (deadline is None or time.monotonic() < deadline):
            time.sleep(self._poll_s)
            missing = nodes - set(self._grid.get_node_ids())
        if missing:
            names = ", ".join(sorted(self._site_of.get(n, str(n)) for n in missing))
            logger.warning("site(s) %s did not connect within the round's timeout", names)
        else:
            logger.warning("site(s) %s connected; the round goes on", names)

    # -- the rest is the wrapped grid's ---------------------------------------------------

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)
