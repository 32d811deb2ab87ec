"""Each private corner of Flower that :mod:`fedll.federation.flower_private` fences in, checked
against the installed Flower: the name exists and does what fedll relies on."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import flwr
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    QFedAvg,
)

from fedll.federation import flower_private as fp

ROOT = Path(__file__).resolve().parents[2]


def test_written_for_this_flower():
    assert flwr.__version__.startswith("1.42."), "flower_private is written for flwr 1.42"


def test_the_grid_interface_and_its_run():
    # a new abstract method would also make InProcessGrid's instantiation fail
    assert set(Grid.__abstractmethods__) == {
        "set_run", "run", "create_message", "get_node_ids", "push_messages", "pull_messages",
        "send_and_receive",
    }  # fmt: skip
    assert inspect.signature(Grid.set_run).parameters["run"].annotation in (fp.Run, "Run")
    run = fp.Run.create_empty(run_id=5)
    run.primary_task_id = 9
    assert (run.run_id, fp.Run(**vars(run)).primary_task_id) == (5, 9)


def test_a_message_takes_its_source_from_the_task_identity_and_its_id_from_the_fence():
    fp.set_task_identity(run_id=11, node_id=SUPERLINK_NODE_ID, task_id=13)
    message = Message(RecordDict(), 12345, "query.meta")
    assert (message.metadata.run_id, message.metadata.src_node_id) == (11, SUPERLINK_NODE_ID)
    assert message.metadata.src_task_id == 13
    fp.assign_message_id(message, "abc")
    assert message.metadata.message_id == "abc"
    assert Message(RecordDict(), reply_to=message).metadata.reply_to_message_id == "abc"


def test_the_error_reason_is_the_supernodes():
    assert ErrorCode.CLIENT_APP_RAISED_EXCEPTION == 2
    source = inspect.getsource(importlib.import_module("flwr.supernode.runtime.run_clientapp"))
    assert 'reason = str(type(ex)) + ":<\'" + str(ex) + "\'>"' in source
    assert fp.error_reason(ValueError("x")) == str(ValueError) + ":<'x'>"


def test_fedavgs_reply_check_sorts_valid_and_error_replies():
    assert list(inspect.signature(FedAvg._check_and_log_replies).parameters) == [
        "self", "replies", "is_train", "validate",
    ]  # fmt: skip
    fp.set_task_identity(run_id=1, node_id=SUPERLINK_NODE_ID, task_id=1)
    sent = Message(RecordDict(), 7, "train")
    fp.assign_message_id(sent, "m")
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.ones(2))}),
            "metrics": MetricRecord({"num-examples": 1}),
        }
    )
    good = Message(content, reply_to=sent)
    valid, errors = fp.check_and_log_replies(FedAvg(), [good], is_train=True, validate=True)
    assert (valid, errors) == ([good], [])


def test_the_rule_state_attributes_are_where_flowers_rules_keep_their_state():
    kept = {
        FedAvgM(): ("current_arrays", "momentum_vector"),
        FedAdam(): ("current_arrays", "m_t", "v_t"),
        QFedAvg(client_learning_rate=0.1): ("current_arrays",),
    }
    for rule, names in kept.items():
        assert all(getattr(rule, name) is None for name in names), type(rule).__name__
        assert set(names) <= set(fp.RULE_STATE_ATTRIBUTES)


def test_the_dp_wrappers_have_what_stream_privacy_sets_and_calls():
    fixed = DifferentialPrivacyServerSideFixedClipping(FedAvg(), 1.0, 1.0, num_sampled_clients=2)
    assert fixed.num_sampled_clients == 2
    for name in fp.DP_WRAPPER_ATTRIBUTES:  # a release over the planned n (public_n)
        assert hasattr(fixed, name), name
    adaptive = DifferentialPrivacyClientSideAdaptiveClipping(FedAvg(), 0.0, 2)
    assert adaptive.num_sampled_clients == 2
    assert callable(adaptive._add_noise_to_aggregated_arrays)
    assert fp.KEY_CLIPPING_NORM == "clipping_norm"
    config = fp.PrivacyConfig(
        target_delta=1e-5,
        population_size=4,
        neighboring_relation=fp.NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=fp.SamplingMethod.NO_AMPLIFICATION,
    )
    accountant = fp.RdpAccountant(config)
    restored = fp.RdpAccountant(config)
    restored.load_state_dict(accountant.state_dict())
    assert {"epsilon", "delta"} <= set(inspect.signature(fp.PrivacySpent).parameters)


def test_flower_strategies_have_typed_constructors():
    cls = fp.flower_strategy("FedAvgM")
    parameters = inspect.signature(cls.__init__).parameters
    assert parameters["server_momentum"].annotation is float
    assert parameters["server_momentum"].default == 0.0


def test_flowers_wire_format_round_trips_a_recorddict():
    record = RecordDict(
        {
            "o": ArrayRecord({"m": Array(np.arange(3, dtype=np.float32))}),
            "c": ConfigRecord({"k": 1}),
        }
    )
    back = fp.recorddict_from_wire(fp.recorddict_to_wire(record))
    assert np.array_equal(back["o"]["m"].numpy(), np.arange(3, dtype=np.float32))
    assert dict(back["c"]) == {"k": 1}


def test_nothing_else_reaches_flowers_private_modules():
    """Outside the fence no module of fedll, sites/ or strategies/ imports flwr.supercore,
    flwr.proto or flwr.common.serde, or names a private attribute of a Flower object."""
    private = (
        "flwr.supercore",
        "flwr.proto",
        "flwr.common.serde",
        "google.protobuf",
        "flwr.server.",
    )
    fence = ROOT / "fedll" / "federation" / "flower_private.py"
    offenders = []
    for package in ("fedll", "sites", "strategies"):
        for path in (ROOT / package).rglob("*.py"):
            if path == fence:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.Attribute) and (
                    node.attr == "_check_and_log_replies" or ast.unparse(node).endswith(
                        "metadata.__dict__"
                    )
                ):  # fmt: skip
                    names = ["flwr.server." + node.attr]
                offenders += [
                    f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith(private)
                ]
    assert offenders == []
