"""A rule's state for checkpoints: Flower's strategies keep what they learn in attributes
(FedAvgM's momentum, FedOpt's moments, the current arrays of either, SCAFFOLD's control
variate, a DP wrapper's clipping norm and accountant), which :func:`rule_state` reads as JSON
values and arrays and :func:`restore_rule_state` puts back, for the rule and every strategy it
wraps (:func:`rule_chain`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedll.federation.flower_private import RULE_STATE_ATTRIBUTES


def rule_chain(rule: Any) -> list[Any]:
    """``rule`` and the strategies it wraps (a DP wrapper's ``strategy``), outermost first."""
    chain = [rule]
    while isinstance(getattr(chain[-1], "strategy", None), Strategy):
        chain.append(chain[-1].strategy)
    return chain


def _encode(value: Any) -> dict[str, Any] | None:
    """An attribute as checkpoint state, or None where it is not state (settings, callables)."""
    if isinstance(value, ArrayRecord):  # its order matters (FedAvgM zips it with the model)
        return {"arrayrecord": [v.numpy() for v in value.values()], "keys": list(value)}
    if isinstance(value, np.ndarray):
        return {"array": value}
    # a 0-d array's arithmetic gives a NumPy scalar (FedAvgM's momentum of a counter)
    numeric = (np.ndarray, np.generic)
    if isinstance(value, list) and value and all(isinstance(v, numeric) for v in value):
        return {"list": [np.asarray(v) for v in value]}
    if isinstance(value, dict) and value and all(isinstance(v, numeric) for v in value.values()):
        return {"arrays": {k: np.asarray(v) for k, v in value.items()}}
    return None


def rule_state(rule: Strategy) -> list[dict[str, Any]]:
    """What a rule has learnt, per strategy of :func:`rule_chain`: its array-valued attributes
    (FedAvgM's momentum, FedOpt's moments, the current arrays of either), the attributes a
    rule lists in ``state_numbers`` (numbers it learns, e.g. an adaptive clipping norm),
    which of its known state attributes are still unset (None) and, for a DP wrapper that
    keeps a privacy accountant, the accountant's ``state_dict()`` (the releases composed)."""
    chain = []
    for part in rule_chain(rule):
        arrays = {name: enc for name, value in vars(part).items() if (enc := _encode(value))}
        numbers = {name: getattr(part, name) for name in getattr(part, "state_numbers", ())}
        unset = [name for name, value in vars(part).items() if value is None and _stateful(name)]
        entry = {"arrays": arrays, "numbers": numbers, "unset": unset}
        if (accountant := getattr(part, "accountant", None)) is not None:
            entry["accountant"] = accountant.state_dict()
        chain.append(entry)
    return chain


def _stateful(name: str) -> bool:
    """Whether an attribute that is None now is state a rule fills in later."""
    return name in RULE_STATE_ATTRIBUTES


def restore_rule_state(rule: Strategy, state: Sequence[Mapping[str, Any]]) -> None:
    """Put back :func:`rule_state`."""
    chain = rule_chain(rule)
    if len(chain) != len(state):
        raise ValueError(f"rule state for {len(state)} strategies, the rule has {len(chain)}")
    for part, saved in zip(chain, state, strict=True):
        for name, encoded in saved["arrays"].items():
            (kind, value), *_ = encoded.items()
            if kind == "arrayrecord":
                value = ArrayRecord(
                    {k: Array(np.asarray(v)) for k, v in zip(encoded["keys"], value, strict=True)}
                )
            elif kind == "list":
                value = [np.asarray(v) for v in value]
            elif kind == "arrays":
                value = {k: np.asarray(v) for k, v in value.items()}
            setattr(part, name, value)
        for name, value in saved["numbers"].items():
            setattr(part, name, value)
        for name in saved["unset"]:
            setattr(part, name, None)
        if "accountant" in saved:
            part.accountant.load_state_dict(saved["accountant"])
