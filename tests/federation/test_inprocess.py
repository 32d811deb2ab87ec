"""Tests of the in-process Flower grid with a toy ServerApp (FedAvg) and ClientApp."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import toy_flower_app as toy
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

from fedll.federation.inprocess import (
    InProcessGrid,
    run_server_app,
    simulation_node_configs,
)

NUM_NODES = 4
CONFIG = {"num-server-rounds": 3, "seed": 0, "fail-partition": -1, "result-path": ""}


def make_grid(seed: int = 7, **config: Any) -> tuple[InProcessGrid, dict[str, Any]]:
    run_config = {**CONFIG, **config}
    grid = InProcessGrid(toy.app, simulation_node_configs(NUM_NODES), run_config, seed=seed)
    return grid, run_config


def run_on_server(grid: InProcessGrid, fn: Callable[[Grid], Any]) -> Any:
    """Run ``fn(grid)`` as the main of a ServerApp (so messages can be built) and return it."""
    app = ServerApp()
    out: dict[str, Any] = {}

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        out["value"] = fn(grid)

    run_server_app(app, grid, CONFIG)
    return out["value"]


def partition_of(grid: InProcessGrid, node_id: int) -> int:
    return int(grid.node_context(node_id).node_config["partition-id"])


def test_fedavg_gives_the_hand_computed_average():
    grid, run_config = make_grid()
    started = time.perf_counter()
    context = run_server_app(toy.server_app, grid, run_config)
    elapsed = time.perf_counter() - started

    # Client p adds p and weighs p + 1: each round adds (0*1 + 1*2 + 2*3 + 3*4) / 10 = 2.
    # Had the clients shared FedAvg's one RecordDict, the in-place additions would pile up.
    final = context.state["final-arrays"]
    for name, initial in toy.INITIAL_ARRAYS.items():
        np.testing.assert_allclose(final[name].numpy(), initial + 3 * 2.0, rtol=0, atol=1e-12)
    assert elapsed < 2.0  # measured ~0.02 s


def test_context_state_persists_per_node_across_rounds():
    grid, run_config = make_grid()
    context = run_server_app(toy.server_app, grid, run_config)

    for server_round in (1, 2, 3):  # every node reports its own train count
        calls = context.state[f"train-metrics-{server_round}"]["train-calls"]
        assert calls == pytest.approx(server_round)
    for node_id in grid.get_node_ids():
        node_context = grid.node_context(node_id)
        assert node_context.state["counters"]["train-calls"] == 3
        assert node_context.node_id == node_id
        assert node_context.run_id == grid.run.run_id
        assert node_context.run_config == run_config


def test_query_meta_maps_nodes_to_partitions():
    grid, run_config = make_grid()
    context = run_server_app(toy.server_app, grid, run_config)

    expected = [f"site-{partition_of(grid, n)}" for n in sorted(grid.get_node_ids())]
    assert list(context.state["sites"]["sites"]) == expected
    assert sorted(expected) == [f"site-{p}" for p in range(NUM_NODES)]


def test_node_ids_are_random_but_seeded():
    grid, _ = make_grid(seed=7)
    node_ids = list(grid.get_node_ids())

    assert len(set(node_ids)) == NUM_NODES
    assert not set(node_ids) & set(range(NUM_NODES + 2))  # never 0..N-1, never the server's
    assert node_ids == list(make_grid(seed=7)[0].get_node_ids())
    assert grid.run.run_id == make_grid(seed=7)[0].run.run_id
    assert not set(node_ids) & set(make_grid(seed=8)[0].get_node_ids())
    configs = [grid.node_context(n).node_config for n in node_ids]
    assert configs == [{"partition-id": p, "num-partitions": NUM_NODES} for p in range(NUM_NODES)]


def test_set_run_accepts_only_this_grids_run():
    grid, _ = make_grid()
    run = grid.run
    run.fab_id = "fedll/trial"
    grid.set_run(run)

    assert grid.run.fab_id == "fedll/trial"
    assert grid.run is not grid.run  # a copy, as Flower's grids return
    with pytest.raises(ValueError, match="serves run"):
        grid.set_run(Run.create_empty(run_id=run.run_id + 1))


def test_replies_carry_flower_metadata():
    grid, _ = make_grid()

    def query(grid: Grid) -> tuple[list[Message], list[Message], list[Message]]:
        sent = [
            Message(RecordDict(), node_id, "query.meta", group_id="g1")
            for node_id in grid.get_node_ids()
        ]
        replies = list(grid.send_and_receive(sent))
        again = list(grid.pull_messages([m.metadata.message_id for m in sent]))
        return sent, replies, again

    sent, replies, again = run_on_server(grid, query)

    assert again == []  # a reply is pulled once
    assert len(replies) == len(sent)
    run_id = grid.run.run_id
    for message, reply in zip(sent, replies, strict=True):
        request, answer = message.metadata, reply.metadata
        assert request.run_id == run_id and request.src_node_id == SUPERLINK_NODE_ID
        assert answer.reply_to_message_id == request.message_id != ""
        assert answer.message_id not in ("", request.message_id)
        assert answer.src_node_id == request.dst_node_id
        assert answer.dst_node_id == SUPERLINK_NODE_ID
        assert (answer.run_id, answer.group_id, answer.message_type) == (run_id, "g1", "query.meta")
        assert answer.delivered_at != ""
        assert reply.content["meta"]["partition-id"] == partition_of(grid, request.dst_node_id)


def test_client_exception_becomes_an_error_reply(caplog):
    grid, _ = make_grid(**{"fail-partition": 1})
    failing = next(n for n in grid.get_node_ids() if partition_of(grid, n) == 1)
    healthy = next(n for n in grid.get_node_ids() if partition_of(grid, n) == 2)

    def train(grid: Grid) -> list[Message]:
        content = RecordDict({"arrays": toy.ArrayRecord(), "config": ConfigRecord()})
        sent = [Message(content, node_id, "train", group_id="1") for node_id in (failing, healthy)]
        return list(grid.send_and_receive(sent))

    with caplog.at_level(logging.WARNING, logger="fedll.federation.inprocess"):
        error_reply, good_reply = run_on_server(grid, train)

    assert error_reply.has_error() and not good_reply.has_error()
    assert error_reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION == 2
    assert error_reply.error.reason == "<class 'RuntimeError'>:<'partition 1 fails on purpose'>"
    assert error_reply.metadata.src_node_id == failing
    assert error_reply.metadata.dst_node_id == SUPERLINK_NODE_ID
    assert error_reply.metadata.message_type == "train"
    assert "fails on purpose" in caplog.text
    # As on Flower, a ClientApp that raises leaves its node's context as it was.
    assert "counters" not in grid.node_context(failing).state
    assert grid.node_context(healthy).state["counters"]["train-calls"] == 1


def test_fedavg_aggregates_the_replies_without_error():
    grid, run_config = make_grid(**{"fail-partition": 1})
    context = run_server_app(toy.server_app, grid, run_config)

    # Without partition 1: each round adds (0*1 + 2*3 + 3*4) / (1 + 3 + 4) = 2.25.
    final = context.state["final-arrays"]
    for name, initial in toy.INITIAL_ARRAYS.items():
        np.testing.assert_allclose(final[name].numpy(), initial + 3 * 2.25, rtol=0, atol=1e-12)


def test_message_to_an_unknown_node_is_dropped(caplog):
    grid, _ = make_grid()
    unknown = max(grid.get_node_ids()) + 1

    with caplog.at_level(logging.ERROR, logger="fedll.federation.inprocess"):
        pushed = run_on_server(
            grid, lambda g: list(g.push_messages([Message(RecordDict(), unknown, "query.meta")]))
        )

    assert pushed == []
    assert f"no node with id {unknown}" in caplog.text


def test_server_app_exception_propagates():
    grid, _ = make_grid()
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        raise KeyError("no such round")

    with pytest.raises(KeyError, match="no such round"):
        run_server_app(app, grid, CONFIG)


@pytest.mark.slow
def test_trials_in_ray_tasks_match_sequential(monkeypatch):
    ray = pytest.importorskip("ray")
    # Ray workers import the toy app by name: put tests/ on their path.
    tests_dir = str(Path(__file__).parents[1])
    python_path = [tests_dir, os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in python_path if p))
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning
    trials = [({**CONFIG, "seed": 3}, 5), ({**CONFIG, "fail-partition": 2}, 6)]
    sequential = [toy.run_trial(config, NUM_NODES, seed) for config, seed in trials]

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024**2,
        log_to_driver=False,
    )
    try:
        remote_trial = ray.remote(num_cpus=1)(toy.run_trial)
        in_ray = ray.get([remote_trial.remote(config, NUM_NODES, seed) for config, seed in trials])
    finally:
        ray.shutdown()

    for expected, got in zip(sequential, in_ray, strict=True):
        assert expected.keys() == got.keys()
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
