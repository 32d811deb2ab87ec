"""Mid-trial checkpoints: a trial's whole state after a round, as bytes the driver keeps.

With ``execution.checkpoint_every: N``, a federated trial hands its driver, after rounds N,
2N, ... (not the last), a :class:`Checkpoint`: the global model, the strategy's state (e.g.
FedAvgM's velocity, the failed and rejected sites so far), every simulated site's Flower
context state (its optimiser moments, CL state, replay buffer, FedBN norms), the RNG states
of the trial's process and grid, and the results so far. The driver keeps the latest per trial
(``RUN_DIR/checkpoints/<trial id>.ckpt``); a rerun resumes an unfinished trial from it and
gives the results an uninterrupted run gives.

The file is an ``.npz`` (no pickle: it is read with ``allow_pickle=False``): ``meta.json``, a
JSON tree in which each array is named, and the arrays. Flower records are stored in
Flower's own wire format (protobuf), byte for byte.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

import fedll
from fedll.errors import DataError

FORMAT = "fedll-checkpoint"
VERSION = 1
_ARRAY = "__array__"


@dataclass(frozen=True)
class Checkpoint:
    """A federated trial's state after ``round`` of its rounds.

    model: the global state dict (CPU arrays). strategy: the strategy's own state (JSON
    values and arrays). nodes: node id -> its context state (empty where the sites keep their
    own: ``flwr run``, deployment). rng: the RNG states. results:
    :meth:`fedll.results.TrialResults.snapshot` of the rows so far. federation: the Flower
    run id of the run that started the trial, which the sites' kept state is bound to
    (:mod:`fedll.site_state`; empty in a checkpoint written before it was kept).
    """

    trial_id: str
    fingerprint: str
    round: int
    model: dict[str, np.ndarray]
    strategy: dict[str, Any]
    nodes: dict[int, RecordDict]
    rng: dict[str, Any]
    results: dict[str, Any]
    federation: str = ""


def encode(checkpoint: Checkpoint) -> bytes:
    """The checkpoint as ``.npz`` bytes."""
    arrays: dict[str, np.ndarray] = {}

    def tree(value: Any, path: str) -> Any:
        if isinstance(value, np.ndarray):
            arrays[path] = value
            return {_ARRAY: path}
        if isinstance(value, Mapping):
            return {str(k): tree(v, f"{path}/{k}") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [tree(v, f"{path}/{i}") for i, v in enumerate(value)]
        if isinstance(value, np.generic):
            return value.item()
        return value

    nodes = {
        str(node): np.frombuffer(recorddict_to_proto(state).SerializeToString(), dtype=np.uint8)
        for node, state in checkpoint.nodes.items()
    }
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "fedll": fedll.__version__,
        "trial": checkpoint.trial_id,
        "fingerprint": checkpoint.fingerprint,
        "round": checkpoint.round,
        "federation": checkpoint.federation,
        "model": tree(checkpoint.model, "model"),
        "strategy": tree(checkpoint.strategy, "strategy"),
        "nodes": tree(nodes, "nodes"),
        "rng": tree(checkpoint.rng, "rng"),
        "results": tree(checkpoint.results, "results"),
    }
    text = json.dumps(meta, sort_keys=True, allow_nan=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{"meta.json": np.frombuffer(text.encode(), dtype=np.uint8)}, **arrays)
    return buffer.getvalue()


def decode(data: bytes, source: str) -> Checkpoint:
    """The checkpoint in ``data``; DataError naming ``source`` when it is not one this fedll
    reads."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(arrays.pop("meta.json").tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{source}: not a fedll checkpoint ({type(error).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{source}: not a fedll checkpoint")
    if meta.get("version") != VERSION:
        raise DataError(
            f"{source}: checkpoint format {meta.get('version')} (fedll {meta.get('fedll')}); "
            f"this fedll reads format {VERSION}"
        )

    def value(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {_ARRAY}:
                if node[_ARRAY] not in arrays:
                    raise DataError(f"{source}: checkpoint array {node[_ARRAY]} is missing")
                return arrays[node[_ARRAY]]
            return {k: value(v) for k, v in node.items()}
        if isinstance(node, list):
            return [value(v) for v in node]
        return node

    try:
        nodes = {}
        for node, raw in value(meta["nodes"]).items():
            proto = ProtoRecordDict()
            proto.ParseFromString(raw.tobytes())
            nodes[int(node)] = recorddict_from_proto(proto)
        return Checkpoint(
            trial_id=str(meta["trial"]),
            fingerprint=str(meta["fingerprint"]),
            round=int(meta["round"]),
            model=value(meta["model"]),
            strategy=value(meta["strategy"]),
            nodes=nodes,
            rng=value(meta["rng"]),
            results=value(meta["results"]),
            federation=str(meta.get("federation", "")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{source}: a damaged fedll checkpoint ({error})") from None


@dataclass(frozen=True)
class Checkpointing:
    """Mid-trial checkpoints (:mod:`fedll.checkpoint`): after every ``every``-th round (not
    the last) the trial's state goes to ``save``; ``resume`` continues from one.

    With ``node_states`` (a sweep's trial) the checkpoint holds the sites' context states too,
    which needs a grid that can give and take them (:class:`fedll.inprocess.InProcessGrid`;
    on another grid no checkpoint is taken). Without (``flwr run``, deployment) the sites keep
    their own state on their disks (:mod:`fedll.site_state`) and the checkpoint holds the
    server's side alone."""

    every: int
    fingerprint: str
    save: Callable[[Checkpoint], None] | None = None
    resume: Checkpoint | None = None
    node_states: bool = True
