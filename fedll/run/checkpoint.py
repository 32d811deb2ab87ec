"""Mid-trial checkpoints: a trial's whole state after a round, as bytes the driver keeps.

With ``execution.checkpoint_every: N``, a federated trial hands its driver, after rounds N,
2N, ... (not the last), a :class:`Checkpoint`: the global model, the strategy's state (e.g.
FedAvgM's velocity, the failed and rejected sites so far), every simulated site's Flower
context state (its optimiser moments, CL state, replay buffer, FedBN norms), the RNG states
of the trial's process and grid, and the results so far. The driver keeps the latest per trial
(``RUN_DIR/checkpoints/<trial id>.ckpt``); a rerun resumes an unfinished trial from it and
gives the results an uninterrupted run gives.

The file is an ``.npz`` (no pickle: it is read with ``allow_pickle=False``): ``meta.json``, a
JSON tree in which each array is named, and the arrays (:func:`fedll.federation.records.pack`).
The sites' Flower records are plain data too (:func:`fedll.federation.records.record_tree`,
each ``Array`` byte for byte), so a checkpoint does not depend on Flower's wire format; one of
format 1 (an earlier fedll's, the records in Flower's protobuf) is still read.

A checkpoint resumes a trial only once :func:`verify` has found that it fits it (the trial
and its settings, a round before the last, the model's own arrays with finite values, node
states that decode, well-formed strategy, RNG and results state); one that does not is a
:class:`CheckpointError`: its driver sets it aside and the trial runs from round 0.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from flwr.app import RecordDict

import fedll
from fedll.errors import DataError
from fedll.federation.flower_private import recorddict_from_wire
from fedll.federation.records import pack, record_tree, records_from_tree, unpack
from fedll.run.rng_state import rng_states, set_rng_states

if TYPE_CHECKING:
    from fedll.federation.inprocess import InProcessGrid
    from fedll.results.rows import TrialResults

FORMAT = "fedll-checkpoint"
VERSION = 2
READS = (1, 2)
"""The formats this fedll reads: 2 (node states as plain data) and 1 (node states in Flower's
wire format, written by an earlier fedll)."""


@dataclass(frozen=True)
class Checkpoint:
    """A federated trial's state after ``round`` of its rounds: the one type that holds
    what survives a restart of the trial, taken by :meth:`capture` and put back by
    :meth:`restore`, written and read by :func:`encode` and :func:`decode`.

    model: the global state dict (CPU arrays). strategy: the strategy's own state (JSON
    values and arrays). nodes: node id -> its context state (empty where the sites keep their
    own: ``flwr run``, deployment). rng: the RNG states. results:
    :meth:`fedll.results.rows.TrialResults.snapshot` of the rows so far. federation: the Flower
    run id of the run that started the trial, which the sites' kept state is bound to
    (:mod:`fedll.federation.site_state`; empty in a checkpoint written before it was kept).
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

    @classmethod
    def capture(
        cls,
        trial_id: str,
        fingerprint: str,
        server_round: int,
        model: Mapping[str, np.ndarray],
        strategy: StrategyState,
        results: TrialResults,
        federation: str,
        sites: InProcessGrid | None = None,
    ) -> Checkpoint:
        """The trial's state after ``server_round``: a copy of the global ``model``, the
        strategy's and the results' state, this process's RNG states and, with ``sites`` (an
        in-process grid), the simulated sites' context states and the grid's RNG; without,
        the server's side alone (the sites keep theirs)."""
        nodes, rng = {}, rng_states()
        if sites is not None:
            nodes, rng = sites.node_states(), {**rng, "grid": sites.rng_state()}
        return cls(
            trial_id=trial_id,
            fingerprint=fingerprint,
            round=server_round,
            model={k: np.array(v) for k, v in model.items()},
            strategy=strategy.checkpoint_state(),
            nodes=nodes,
            rng=rng,
            results=results.snapshot(),
            federation=federation,
        )

    def restore(
        self,
        fingerprint: str,
        rounds: int,
        model: Mapping[str, np.ndarray],
        strategy: StrategyState,
        results: TrialResults,
        sites: InProcessGrid | None = None,
    ) -> int:
        """Put the trial back to where this checkpoint left it, once :func:`verify` has found
        that it fits (the trial of ``results`` run with the settings of ``fingerprint``, its
        ``rounds``, the state dict ``model`` of its fresh model, the nodes of ``sites``); the
        strategy and the results take their state before anything global is set; then the
        sites' states (with ``sites``: else the sites put back their own) and the RNG states.
        Returns the rounds already run. CheckpointError: it does not fit (its driver sets it
        aside and runs the trial from round 0)."""
        source = f"checkpoint of {results.trial.trial_id}"
        verify(
            self, source, trial_id=results.trial.trial_id, fingerprint=fingerprint,
            rounds=rounds, model=model, nodes=sites.get_node_ids() if sites is not None else (),
        )  # fmt: skip
        try:
            strategy.restore_state(self.strategy)
            results.restore(self.results)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            reason = f"{type(error).__name__}: {error}"
            problem = f"its state does not fit the trial ({reason})"
            raise CheckpointError(f"{source}: {problem}") from None
        if sites is not None:
            sites.restore_node_states(self.nodes)
            sites.set_rng_state(self.rng["grid"])
        set_rng_states(self.rng)
        return self.round


class StrategyState(Protocol):
    """A strategy whose state a checkpoint keeps (:class:`strategies.lifelong.Lifelong`)."""

    def checkpoint_state(self) -> dict[str, Any]: ...

    def restore_state(self, state: Mapping[str, Any]) -> None: ...


def encode(checkpoint: Checkpoint) -> bytes:
    """The checkpoint as ``.npz`` bytes (:func:`fedll.federation.records.pack`)."""
    return pack(
        {
            "format": FORMAT,
            "version": VERSION,
            "fedll": fedll.__version__,
            "trial": checkpoint.trial_id,
            "fingerprint": checkpoint.fingerprint,
            "round": checkpoint.round,
            "federation": checkpoint.federation,
            "model": checkpoint.model,
            "strategy": checkpoint.strategy,
            "nodes": {str(node): record_tree(state) for node, state in checkpoint.nodes.items()},
            "rng": checkpoint.rng,
            "results": checkpoint.results,
        }
    )


def decode(data: bytes, source: str) -> Checkpoint:
    """The checkpoint in ``data``; DataError naming ``source`` when it is not one this fedll
    reads (format 1, an earlier fedll's, holds the node states in Flower's wire format)."""
    try:
        meta = unpack(data)
    except ValueError as error:
        raise DataError(f"{source}: not a fedll checkpoint ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{source}: not a fedll checkpoint")
    if meta.get("version") not in READS:
        raise DataError(
            f"{source}: checkpoint format {meta.get('version')} (fedll {meta.get('fedll')}); "
            f"this fedll reads formats {', '.join(map(str, READS))}"
        )
    try:
        nodes = {}
        for node, state in meta["nodes"].items():
            try:
                if meta["version"] == 1:
                    nodes[int(node)] = recorddict_from_wire(np.asarray(state).tobytes())
                else:
                    nodes[int(node)] = records_from_tree(state)
            except ValueError as error:
                raise DataError(
                    f"{source}: a damaged fedll checkpoint (the state of node {node} does not "
                    f"decode: {error})"
                ) from None
        return Checkpoint(
            trial_id=str(meta["trial"]),
            fingerprint=str(meta["fingerprint"]),
            round=int(meta["round"]),
            model=meta["model"],
            strategy=meta["strategy"],
            nodes=nodes,
            rng=meta["rng"],
            results=meta["results"],
            federation=str(meta.get("federation", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise DataError(f"{source}: a damaged fedll checkpoint ({error})") from None


class CheckpointError(DataError):
    """A checkpoint that cannot resume the trial it is kept for (:func:`verify`); its
    message is ``source: problem``."""


def verify(
    checkpoint: Checkpoint,
    source: str,
    *,
    trial_id: str,
    fingerprint: str,
    rounds: int | None = None,
    model: Mapping[str, np.ndarray] | None = None,
    nodes: Collection[int] | None = None,
) -> Checkpoint:
    """``checkpoint`` when it can resume trial ``trial_id`` run with the settings of
    ``fingerprint``, else :class:`CheckpointError` naming ``source`` and the first thing
    wrong. With ``rounds`` (the trial's, T), it is taken after a round 1..T-1 and its results
    hold rows of rounds 0..that round, of that trial, and no later events; with ``model``
    (the state dict a fresh model of the trial has), its model arrays have the same names,
    shapes and dtypes; with ``nodes`` (the grid's node ids), it holds states of those nodes
    only. Always: finite floating model and strategy arrays, a strategy state of JSON values
    and arrays, RNG states that a fresh generator of each kind takes, and node states whose
    arrays decode."""

    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(f"{source}: {problem}")

    if checkpoint.trial_id != trial_id:
        raise refuse(f"taken for trial {checkpoint.trial_id!r}, not {trial_id!r}")
    if checkpoint.fingerprint != fingerprint:
        raise refuse(f"taken for other settings (fingerprint {checkpoint.fingerprint})")
    if rounds is not None and not 1 <= checkpoint.round <= rounds - 1:
        raise refuse(
            f"taken after round {checkpoint.round}, not one of the trial's rounds 1..{rounds - 1} "
            "(a checkpoint is taken after a round before the last)"
        )
    if model is not None:
        _verify_model(checkpoint.model, model, refuse)
    _verify_finite(checkpoint.model, "model", refuse)
    if not isinstance(checkpoint.strategy, Mapping):
        raise refuse("its strategy state is not a mapping")
    _verify_finite(checkpoint.strategy, "strategy", refuse)
    if nodes is not None and (unknown := sorted(set(checkpoint.nodes) - set(nodes))):
        raise refuse(f"it holds the state of node {unknown[0]}, which this trial's grid lacks")
    for node, state in checkpoint.nodes.items():
        for name, record in state.array_records.items():
            try:
                for array in record.values():
                    array.numpy()
            except (ValueError, TypeError) as error:
                raise refuse(
                    f"an array of node {node}'s {name!r} does not decode ({error})"
                ) from None
    _verify_rng(checkpoint.rng, refuse)
    if rounds is not None:
        _verify_results(checkpoint, refuse)
    return checkpoint


def _verify_model(
    held: Mapping[str, Any], model: Mapping[str, np.ndarray], refuse: Callable[[str], Exception]
) -> None:
    if not isinstance(held, Mapping):
        raise refuse("its model is not a state dict")
    if missing := [k for k in model if k not in held]:
        raise refuse(f"its model lacks {missing[0]!r} (and has {len(held)} of {len(model)} arrays)")
    if extra := [k for k in held if k not in model]:
        raise refuse(f"its model has {extra[0]!r}, which the trial's model does not")
    for name, expected in model.items():
        array = held[name]
        if not isinstance(array, np.ndarray):
            raise refuse(f"its model's {name!r} is not an array")
        if array.shape != tuple(expected.shape) or array.dtype != expected.dtype:
            raise refuse(
                f"its model's {name!r} is {array.dtype}{list(array.shape)}, the trial's model "
                f"has {expected.dtype}{list(expected.shape)}"
            )


def _verify_finite(tree: Any, path: str, refuse: Callable[[str], Exception]) -> None:
    """Every floating array in ``tree`` (nested mappings and lists) finite; no other objects
    than JSON values and arrays."""
    if isinstance(tree, np.ndarray):
        if tree.dtype.kind in "fc" and not np.isfinite(tree).all():
            raise refuse(f"{path} holds a value that is not finite (NaN or inf)")
        if tree.dtype.kind not in "biufc":
            raise refuse(f"{path} is an array of {tree.dtype}, not numbers")
    elif isinstance(tree, Mapping):
        for key, value in tree.items():
            _verify_finite(value, f"{path}/{key}", refuse)
    elif isinstance(tree, list | tuple):
        for k, value in enumerate(tree):
            _verify_finite(value, f"{path}/{k}", refuse)
    elif not (tree is None or isinstance(tree, bool | int | float | str)):
        raise refuse(f"{path} is a {type(tree).__name__}, not a JSON value or an array")


def _verify_rng(rng: Any, refuse: Callable[[str], Exception]) -> None:
    """Each RNG state is one that a fresh generator of its kind takes (nothing global is
    touched): torch's (a ByteTensor), NumPy's legacy global one, Python's (and the grid's,
    where there is one)."""
    import torch

    if not isinstance(rng, Mapping):
        raise refuse("its RNG states are not a mapping")
    try:
        torch.Generator().set_state(torch.from_numpy(np.array(rng["torch"], dtype=np.uint8)))
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.RandomState().set_state(
            (kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached)
        )
        for name in ("python", "grid"):  # the grid's: an in-process grid's message ids
            if name == "python" or name in rng:
                version, internal, gauss = rng[name]
                random.Random().setstate((version, tuple(internal), gauss))
        for state in rng.get("cuda", []):
            if np.asarray(state).dtype != np.uint8:
                raise ValueError("a CUDA state is not bytes")
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise refuse(f"its RNG states are damaged ({type(error).__name__}: {error})") from None


def _verify_results(checkpoint: Checkpoint, refuse: Callable[[str], Exception]) -> None:
    """The results so far are the trial's, round 0..``checkpoint.round`` each."""
    done = checkpoint.round
    try:
        results = checkpoint.results
        rounds: set[int] = set()
        for key in ("rows", "attention_rows", "routing_rows"):
            for row in results.get(key, []):
                if row["trial"] != checkpoint.trial_id:
                    raise ValueError(f"{key} of trial {row['trial']!r}")
                if not 0 <= int(row["round"]) <= done:
                    raise ValueError(f"{key} of round {row['round']}")
                if key == "rows":
                    rounds.add(int(row["round"]))
        events = [results["failures"], results["rejected"]]
        events.append(checkpoint.strategy.get("failures", {}))
        events.append(checkpoint.strategy.get("rejected", {}))
        for event in events:
            if late := [int(r) for r in event if not 0 <= int(r) <= done]:
                raise ValueError(f"events of round {late[0]}")
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise refuse(f"its results so far do not fit round {done} ({error})") from None
    if rounds != set(range(done + 1)):
        lacking = sorted(set(range(done + 1)) - rounds)
        raise refuse(f"its results so far lack round {lacking[0]} (it was taken after {done})")


@dataclass(frozen=True)
class Checkpointing:
    """Mid-trial checkpoints (:mod:`fedll.run.checkpoint`): after every ``every``-th round (not
    the last) the trial's state goes to ``save``; ``resume`` continues from one.

    With ``node_states`` (a sweep's trial) the checkpoint holds the sites' context states too,
    which needs a grid that can give and take them
    (:class:`fedll.federation.inprocess.InProcessGrid`; on another grid no checkpoint is taken).
    Without (``flwr run``, deployment) the sites keep their own state on their disks
    (:mod:`fedll.federation.site_state`) and the checkpoint holds the server's side alone."""

    every: int
    fingerprint: str
    save: Callable[[Checkpoint], None] | None = None
    resume: Checkpoint | None = None
    node_states: bool = True
