"""Every private or undocumented corner of Flower (flwr 1.42, pinned in pyproject.toml) that
fedll relies on, in one module.

Flower's public API (``flwr.app``, ``flwr.serverapp``, ``flwr.clientapp``) covers most of
fedll. What it does not cover is reached here and nowhere else, each name with the place in
Flower's source that does the same, and a test against the installed Flower
(tests/federation/test_flower_private.py) that fails loudly when an upgrade changes one:

- the process's task identity (:func:`set_task_identity`: ``flwr.supercore.task_identity``),
  a message's id (:func:`assign_message_id`: ``Metadata`` has no setter), the error reason a
  SuperNode gives an exception (:func:`error_reason`: a copied format) and a grid's run
  (:data:`Run`: ``flwr.supercore.run``), for the in-process grid;
- FedAvg's reply check (:func:`check_and_log_replies`: ``FedAvg._check_and_log_replies``);
- the attributes in which Flower's server-step strategies keep what they learn
  (:data:`RULE_STATE_ATTRIBUTES`), which a checkpoint keeps;
- the config key of a DP clipping norm (:data:`KEY_CLIPPING_NORM`), the privacy accountant
  (``flwr.supercore.privacy_accounting``) and the DP wrappers' ``num_sampled_clients`` and
  release steps (:data:`DP_WRAPPER_ATTRIBUTES`, used by :mod:`strategies.privacy`);
- the constructors of ``flwr.serverapp.strategy`` (:func:`flower_strategy`), whose
  signatures fedll's YAML vocabulary is generated from (:mod:`fedll.config.options`);
- Flower's wire format of a ``RecordDict`` (:func:`recorddict_from_wire`), read only to take
  over a checkpoint or a site's kept state written by an earlier fedll (fedll now writes
  records in its own plain format, :mod:`fedll.federation.records`).

docs/contributing.md lists them ("Flower internals we rely on").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.privacy_accounting import (
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = [
    "DP_WRAPPER_ATTRIBUTES",
    "KEY_CLIPPING_NORM",
    "RULE_STATE_ATTRIBUTES",
    "NeighboringRelation",
    "PrivacyConfig",
    "PrivacySpent",
    "RdpAccountant",
    "Run",
    "SamplingMethod",
    "assign_message_id",
    "check_and_log_replies",
    "recorddict_to_wire",
    "error_reason",
    "flower_strategy",
    "recorddict_from_wire",
    "set_task_identity",
]

RULE_STATE_ATTRIBUTES = ("current_arrays", "momentum_vector", "m_t", "v_t")
"""The attributes in which Flower's FedAvgM, FedOpt (FedAdam, FedAdagrad, FedYogi) and
q-FedAvg keep what they learn across rounds; None until their first round
(``flwr/serverapp/strategy/fedavgm.py``, ``fedopt.py``, ``qfedavg.py``)."""

DP_WRAPPER_ATTRIBUTES = (
    "num_sampled_clients",
    "current_arrays",
    "_pop_pending_event",
    "_add_noise_to_aggregated_arrays",
    "_compose_release",
)
"""What :class:`strategies.privacy.StreamPrivacy` sets or calls on Flower's DP wrappers
(``flwr/serverapp/strategy/dp_fixed_clipping.py``, ``dp_adaptive_clipping.py``): the ``n`` of
the noise's ``z * C / n`` (set per round, Flower takes it once), the model an update is
measured from, and the steps of one release."""


def set_task_identity(run_id: int, node_id: int, task_id: int) -> None:
    """Declare the task this process runs (``flwr.supercore.task_identity``, as
    ``flwr/simulation/run_simulation.py`` and ``flwr/superlink/runtime/run_serverapp.py`` do).

    ``Message(content, dst_node_id, message_type)`` reads ``TaskIdentity.run_id``,
    ``.node_id`` (its ``src_node_id``) and ``.task_id``; they are unset until a runtime sets
    them, and the constructor raises ``RuntimeError`` while they are.
    """
    TaskIdentity.task_id = task_id
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id


def assign_message_id(message: Message, message_id: str) -> None:
    """Give ``message`` its id (``Metadata.message_id`` has no setter): Flower's SuperLink and
    in-memory grid (``flwr/superlink/grid/inmemory_grid.py``) write
    ``metadata.__dict__["_message_id"]``."""
    message.metadata.__dict__["_message_id"] = message_id


def error_reason(ex: Exception) -> str:
    """The reason of an error reply, as Flower's SuperNode words it (a copied format:
    ``flwr/supernode/runtime/run_clientapp.py`` builds it inline, with no function to call)."""
    return f"{type(ex)}:<'{ex}'>"


def check_and_log_replies(
    strategy: Any, replies: Iterable[Message], *, is_train: bool, validate: bool
) -> tuple[list[Message], list[Message]]:
    """The valid and the error replies, as ``FedAvg._check_and_log_replies`` sorts and logs
    them (with ``validate``, it raises on replies that break Flower's reply contract)."""
    return strategy._check_and_log_replies(replies, is_train=is_train, validate=validate)  # noqa: SLF001


def flower_strategy(name: str) -> type:
    """The class ``flwr.serverapp.strategy.<name>``; fedll reads its constructor's signature
    (parameter names, annotations, defaults), which Flower does not promise to keep."""
    from flwr.serverapp import strategy

    return getattr(strategy, name)


def recorddict_from_wire(data: bytes) -> RecordDict:
    """The ``RecordDict`` in ``data``, Flower's wire format (protobuf, ``flwr.proto`` and
    ``flwr.common.serde``); ValueError where it does not decode."""
    from flwr.common.serde import recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
    from google.protobuf.message import DecodeError

    proto = ProtoRecordDict()
    try:
        proto.ParseFromString(data)
        return recorddict_from_proto(proto)
    except (DecodeError, AttributeError) as error:
        raise ValueError(type(error).__name__) from None


def recorddict_to_wire(record: RecordDict) -> bytes:
    """``record`` in Flower's wire format (what an earlier fedll wrote; kept for tests that
    make such files)."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(record).SerializeToString()
