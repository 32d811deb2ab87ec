"""An in-process Flower ``Grid``: one ServerApp and one ClientApp serving N nodes in one process.

A fedll trial is a federation: a ServerApp drives the rounds and one ClientApp serves every
site. Flower's Simulation Engine costs 10-25 s to start and hung inside a Ray task, so a sweep
runs each trial through :class:`InProcessGrid`, an implementation of Flower's public
``flwr.serverapp.Grid`` that hands every message straight to the ClientApp, in the calling
process. The apps are unchanged: the same ServerApp and ClientApp run under ``flwr run``
(Simulation Engine) and in deployment.

What it keeps from Flower (flwr 1.42), so that strategies such as
``flwr.serverapp.strategy.FedAvg`` behave as they do there:

- one ``Context`` per node (``run_id``, ``node_id``, ``node_config``, ``state``,
  ``run_config``), kept across rounds; a ClientApp call that raises leaves it unchanged, as
  Flower's SuperNode and Simulation Engine do;
- node ids are random 63-bit integers (drawn from ``seed``), never ``0..N-1``: code must not key
  on them; in simulation ``node_config`` holds ``partition-id`` and ``num-partitions``;
- every message reaches the ClientApp as a copy, and every reply reaches the server as a copy,
  as after the (de)serialisation on Flower proper (FedAvg sends the same ``RecordDict`` object
  to all nodes);
- replies carry Flower's metadata (``reply_to_message_id``, swapped src/dst node ids, run id,
  group id, message type, a message id, ``delivered_at`` once pulled);
- an exception in the ClientApp becomes an error reply,
  ``Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)`` with the
  reason formatted as the SuperNode formats it, so the strategy aggregates the other replies.

What differs: replies are computed synchronously during ``push_messages`` (``timeout`` and TTL
play no part), and ``ServerApp`` and ClientApp share the process-wide ``TaskIdentity`` of the
server, so one process runs one trial at a time (a Ray task does).
"""

from __future__ import annotations

import copy
import datetime
import importlib
import logging
import random
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flwr.app import Context, Error, Message, RecordDict, UserConfig, UserConfigValue
from flwr.clientapp import ClientApp
from flwr.common.constant import (
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    SUPERLINK_NODE_ID,
    ErrorCode,
)
from flwr.serverapp import Grid, ServerApp

from fedll.federation.flower_private import (
    Run,
    assign_message_id,
    error_reason,
    set_task_identity,
)

logger = logging.getLogger(__name__)

_ID_BITS = 63  # node, run and task ids fit a signed int64, as every Flower record field does


def load_reference(reference: str) -> Any:
    """The object a Flower-style ``"package.module:attribute"`` reference names."""
    module, sep, attribute = reference.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"expected 'module:attribute', got {reference!r}")
    return getattr(importlib.import_module(module), attribute)


def simulation_node_configs(num_nodes: int) -> list[UserConfig]:
    """Return the ``node_config`` of each of ``num_nodes`` simulated nodes, as Flower sets them.

    Flower's Simulation Engine gives node ``i`` ``{"partition-id": i, "num-partitions": N}``.
    """
    return [{PARTITION_ID_KEY: i, NUM_PARTITIONS_KEY: num_nodes} for i in range(num_nodes)]


class InProcessGrid(Grid):
    """A Flower ``Grid`` whose nodes run ``client_app`` in the calling process.

    Parameters
    ----------
    client_app:
        The one ClientApp every node runs.
    node_configs:
        One ``node_config`` per node, e.g. :func:`simulation_node_configs` or, to mimic a
        deployment, the ``--node-config`` of each SuperNode.
    run_config:
        The run config every node's ``Context`` carries (the app's fused run config).
    run_id:
        The run's id; drawn from ``seed`` when ``None``.
    seed:
        Seeds the run id, the node ids and the message ids, so that a trial is reproducible.
    """

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Sequence[Mapping[str, UserConfigValue]],
        run_config: Mapping[str, UserConfigValue],
        *,
        run_id: int | None = None,
        seed: int = 0,
    ) -> None:
        self._client_app = client_app
        self._rng = random.Random(seed)
        run = Run.create_empty(run_id=self._draw_id() if run_id is None else run_id)
        run.primary_task_id = self._draw_id()
        self._run = run
        self._contexts: dict[int, Context] = {}
        for node_config in node_configs:
            node_id = self._draw_id(exclude=self._contexts.keys() | {SUPERLINK_NODE_ID})
            self._contexts[node_id] = Context(
                run_id=run.run_id,
                node_id=node_id,
                node_config=dict(node_config),
                state=RecordDict(),
                run_config=dict(run_config),
            )
        self._replies: dict[str, Message] = {}
        logger.debug("In-process grid: run %d with %d nodes", run.run_id, len(self._contexts))

    def _draw_id(self, exclude: Iterable[int] = ()) -> int:
        """Return a random id in ``[2, 2**63)`` that is not in ``exclude``."""
        excluded = set(exclude)
        while (drawn := self._rng.randrange(2, 2**_ID_BITS)) in excluded:
            pass
        return drawn

    def _draw_message_id(self) -> str:
        """Return a fresh message id, a UUID4 string like the Simulation Engine's."""
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def node_states(self) -> dict[int, RecordDict]:
        """Each node's context state (a copy), by node id: what a checkpoint keeps of the
        simulated sites."""
        return {node_id: copy.deepcopy(c.state) for node_id, c in self._contexts.items()}

    def restore_node_states(self, states: Mapping[int, RecordDict]) -> None:
        """Put back the context states of :meth:`node_states` (the node ids must be this
        grid's: the same seed draws the same ids)."""
        unknown = set(states) - set(self._contexts)
        if unknown:
            raise ValueError(f"no node {min(unknown)} in this grid")
        for node_id, state in states.items():
            self._contexts[node_id].state = copy.deepcopy(state)

    def rng_state(self) -> list:
        """The state of the generator of message ids (JSON values)."""
        version, internal, gauss = self._rng.getstate()
        return [version, list(internal), gauss]

    def set_rng_state(self, state: Sequence) -> None:
        version, internal, gauss = state
        self._rng.setstate((version, tuple(internal), gauss))

    def set_run(self, run: Run) -> None:
        """Set the run; it must be the run this grid's node contexts belong to."""
        if not isinstance(run, Run):
            raise TypeError(f"`run` must be an instance of Run, got {type(run).__name__}")
        if run.run_id != self._run.run_id:
            raise ValueError(f"this grid serves run {self._run.run_id}, not run {run.run_id}")
        self._run = run

    @property
    def run(self) -> Run:
        """A copy of the run this grid serves."""
        return Run(**vars(self._run))

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create an instruction message (deprecated in Flower: prefer ``Message(...)``)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        """Return the ids of all nodes, in the order of ``node_configs``."""
        return list(self._contexts)

    def node_context(self, node_id: int) -> Context:
        """Return the ``Context`` node ``node_id`` keeps across rounds (for inspection)."""
        return self._contexts[node_id]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver each message to the ClientApp of its destination node, keeping the replies.

        Returns the ids of the messages delivered. As on Flower's SuperLink, a message for an
        unknown node or another run, or not sent by the server, is logged and dropped.
        """
        message_ids: list[str] = []
        for message in messages:
            metadata = message.metadata
            if metadata.reply_to_message_id or metadata.ttl <= 0 or metadata.delivered_at:
                raise ValueError(f"Invalid message: {message}")
            problem = self._refusal(message)
            if problem:
                logger.error("Message dropped: %s", problem)
                continue
            assign_message_id(message, self._draw_message_id())
            reply = self._deliver(message)
            assign_message_id(reply, self._draw_message_id())
            self._replies[metadata.message_id] = reply
            message_ids.append(metadata.message_id)
        return message_ids

    def _refusal(self, message: Message) -> str | None:
        """Return why Flower's SuperLink would refuse ``message``, or ``None``."""
        metadata = message.metadata
        if metadata.run_id != self._run.run_id:
            return f"run id {metadata.run_id} is not this grid's run {self._run.run_id}"
        if metadata.src_node_id != SUPERLINK_NODE_ID:
            return f"source node id {metadata.src_node_id} is not the server's"
        if metadata.dst_node_id not in self._contexts:
            return f"no node with id {metadata.dst_node_id}"
        return None

    def _deliver(self, message: Message) -> Message:
        """Run the ClientApp on a copy of ``message`` and of the node's context.

        The node's context is replaced by the updated copy only when the ClientApp returns a
        reply; an exception becomes an error reply and leaves the context as it was.
        """
        node_id = message.metadata.dst_node_id
        context = copy.deepcopy(self._contexts[node_id])
        started = time.perf_counter()
        try:
            reply = self._client_app(copy.deepcopy(message), context)
            if not (
                isinstance(reply, Message)
                and reply.metadata.reply_to_message_id == message.metadata.message_id
            ):
                raise TypeError(
                    "a ClientApp must return Message(content or error, reply_to=message), "
                    f"got {type(reply).__name__}"
                )
        except Exception as ex:  # every ClientApp failure becomes an error reply, as in Flower
            # one line (the strategy reports the failure too); the traceback at debug level
            logger.warning(
                "ClientApp raised on node %d for a %r message: %s: %s",
                node_id,
                message.metadata.message_type,
                type(ex).__name__,
                ex,
            )
            logger.debug("traceback of the ClientApp on node %d", node_id, exc_info=True)
            error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=error_reason(ex))
            return Message(error, reply_to=message)
        self._contexts[node_id] = context
        logger.debug(
            "Node %d handled a %r message in %.3f s",
            node_id,
            message.metadata.message_type,
            time.perf_counter() - started,
        )
        return copy.deepcopy(reply)

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Return (once) the replies to the given message ids that have not been pulled yet."""
        replies = [self._replies.pop(i) for i in message_ids if i in self._replies]
        delivered_at = datetime.datetime.now(tz=datetime.timezone.utc).isoformat()
        for reply in replies:
            reply.metadata.delivered_at = delivered_at
        return replies

    def send_and_receive(
        self,
        messages: Iterable[Message],
        *,
        timeout: float | None = None,
    ) -> list[Message]:
        """Push ``messages`` and return all their replies.

        Replies are computed during the push, so none is ever outstanding and ``timeout``
        (accepted for the ``Grid`` interface) plays no part.
        """
        return self.pull_messages(self.push_messages(messages))


def run_server_app(server_app: ServerApp, grid: Grid, run_config: UserConfig) -> Context:
    """Run ``server_app`` on ``grid`` in this process, as Flower's ServerApp runtime does.

    The server's ``Context`` is built as Flower builds it (node id ``SUPERLINK_NODE_ID``, empty
    ``node_config``, empty ``state``, ``run_config``), the process's task identity is set to
    the server of ``grid.run``, and ``server_app(grid=grid, context=context)`` is called
    (its lifespan included). An exception in the ServerApp propagates.

    Returns the server's ``Context``: ``ServerApp.__call__`` discards the return value of the
    ``@app.main()`` function, so a ServerApp hands results back through ``context.state`` (or
    files), as it must under ``flwr run`` too.
    """
    run = grid.run
    context = Context(
        run_id=run.run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=dict(run_config),
    )
    task_id = run.primary_task_id if run.primary_task_id is not None else 1
    set_task_identity(run_id=run.run_id, node_id=SUPERLINK_NODE_ID, task_id=task_id)
    started = time.perf_counter()
    server_app(grid=grid, context=context)
    logger.info("ServerApp of run %d finished in %.2f s", run.run_id, time.perf_counter() - started)
    return context
