"""A toy Flower app (one ServerApp, one ClientApp) for the in-process grid's tests.

Every client adds its ``partition-id`` to the arrays it receives and reports
``num-examples = partition-id + 1``, so FedAvg's result can be worked out by hand. The run
config keys (flat kebab-case, as in a Flower ``pyproject.toml``):

- ``num-server-rounds``: FedAvg rounds;
- ``seed``: seeds Python's ``random``, which FedAvg's node sampling draws from;
- ``fail-partition``: the partition whose ``train`` raises (-1: none);
- ``result-path``: when not empty, the final arrays are also saved there (``.npz``), the way
  out of a ServerApp run by ``flwr run``.
"""

from __future__ import annotations

import random

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedll.federation.inprocess import InProcessGrid, run_server_app, simulation_node_configs

INITIAL_ARRAYS = {
    "w": np.arange(6, dtype=np.float64).reshape(2, 3),
    "b": np.array([0.5, -1.0], dtype=np.float64),
}

app = ClientApp()


def _partition(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _count(context: Context, key: str) -> int:
    """Increment and return the per-node counter ``key`` kept in ``context.state``."""
    counters = context.state.get("counters", MetricRecord())
    counters[key] = int(counters.get(key, 0)) + 1
    context.state["counters"] = counters
    return int(counters[key])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Add the partition id to every array, in place, and count the train calls."""
    partition = _partition(context)
    calls = _count(context, "train-calls")
    if partition == int(context.run_config["fail-partition"]):
        raise RuntimeError(f"partition {partition} fails on purpose")
    arrays = msg.content["arrays"]
    for name in list(arrays.keys()):
        arrays[name] = Array(arrays[name].numpy() + partition)
    metrics = MetricRecord({"num-examples": partition + 1, "train-calls": calls})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Report the mean of the received arrays."""
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    mean = float(np.mean(np.concatenate([a.ravel() for a in arrays])))
    metrics = MetricRecord({"num-examples": _partition(context) + 1, "mean": mean})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.query("meta")
def meta(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node serves."""
    record = ConfigRecord(
        {"partition-id": _partition(context), "site": f"site-{_partition(context)}"}
    )
    return Message(RecordDict({"meta": record}), reply_to=msg)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Ask every node for its partition, then run FedAvg; results go to ``context.state``."""
    random.seed(int(context.run_config["seed"]))
    node_ids = sorted(grid.get_node_ids())
    queries = [Message(RecordDict(), node_id, "query.meta") for node_id in node_ids]
    replies = grid.send_and_receive(queries)
    sites = {r.metadata.src_node_id: str(r.content["meta"]["site"]) for r in replies}
    context.state["sites"] = ConfigRecord({"sites": [sites[n] for n in node_ids]})

    strategy = FedAvg(min_available_nodes=len(node_ids))
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({k: Array(v) for k, v in INITIAL_ARRAYS.items()}),
        num_rounds=int(context.run_config["num-server-rounds"]),
    )
    context.state["final-arrays"] = result.arrays
    for server_round, metrics in result.train_metrics_clientapp.items():
        context.state[f"train-metrics-{server_round}"] = metrics
    if result_path := str(context.run_config.get("result-path", "")):
        np.savez(result_path, **{k: v.numpy() for k, v in result.arrays.items()})


def run_trial(run_config: dict[str, int | str], num_nodes: int, seed: int) -> dict[str, np.ndarray]:
    """Run the toy federation on an in-process grid; return the final arrays by name."""
    grid = InProcessGrid(app, simulation_node_configs(num_nodes), run_config, seed=seed)
    context = run_server_app(server_app, grid, run_config)
    return {k: v.numpy() for k, v in context.state["final-arrays"].items()}
