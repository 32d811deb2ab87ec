"""SCAFFOLD (Karimireddy et al., ICML 2020): stochastic controlled averaging.

The server keeps a control variate ``c`` (one array per trainable parameter, zeros at the
start) and sends it to the round's sites with the global model ``x`` (the ``control``
ArrayRecord). Each site corrects its gradients by ``c - c_i`` and replies with its model
``y_i`` and the change of its own control variate ``delta c_i`` (``control-delta``; the site
side is :mod:`fedll.training.scaffold`). The server then steps

- ``x <- x + server_lr * (mean_i y_i - x)`` over the trainable parameters, the mean weighted by
  sample count as in FedAvg (the paper's mean is uniform; weighted, ``server_lr = 1`` is
  FedAvg's model exactly); buffers (running statistics) are averaged and counters kept by
  max, as FedAvg does;
- ``c <- c + |S| / N * mean_i delta c_i`` (uniform, as in the paper), ``S`` the round's
  accepted updates and ``N`` the sites of the federation.

``c`` is the rule's state: the lifelong layer's checkpoints keep it
(:func:`strategies.rule_state.rule_state`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedll.federation.messages import CONTROL, CONTROL_DELTA
from strategies.aggregation import State, update_problem
from strategies.fedavg import PreciseFedAvg


def server_step(
    current: State, average: State, keys: Iterable[str], server_lr: float
) -> dict[str, np.ndarray]:
    """``average`` with each of ``keys`` replaced by ``x + server_lr * (average - x)``, ``x``
    from ``current`` (float64, cast back to ``average``'s dtype)."""
    out = dict(average)
    for key in keys:
        x = np.asarray(current[key], dtype=np.float64)
        step = np.asarray(average[key], dtype=np.float64) - x
        out[key] = (x + server_lr * step).astype(np.asarray(average[key]).dtype)
    return out


def control_step(control: State, deltas: Sequence[State], num_sites: int) -> dict[str, np.ndarray]:
    """``c + |S| / N * mean_i delta c_i`` (= ``c + sum_i delta c_i / N``) per key of
    ``control``, with ``|S| = len(deltas)`` and ``N = num_sites`` (float64, cast back)."""
    out = {}
    for key, c in control.items():
        total = sum((np.asarray(d[key], dtype=np.float64) for d in deltas), np.zeros(c.shape))
        out[key] = (np.asarray(c, dtype=np.float64) + total / num_sites).astype(c.dtype)
    return out


class Scaffold(PreciseFedAvg):
    """SCAFFOLD's server (see the module docstring): FedAvg's sampling and reply contract,
    the control variate out and in, the global step ``server_lr``.

    ``groups``: the model's parameter groups; ``trainable``: its trainable keys (those with
    a control variate); ``num_sites``: ``N``, the sites of the federation.
    """

    reply_arrays = (CONTROL_DELTA,)

    def __init__(
        self,
        groups: Mapping[str, str],
        trainable: Iterable[str],
        num_sites: int,
        server_lr: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(groups=groups, **kwargs)
        if num_sites < 1:
            raise ValueError(f"SCAFFOLD needs at least one site, got num_sites={num_sites}")
        self.trainable = tuple(sorted(trainable))
        self.num_sites = num_sites
        self.server_lr = float(server_lr)
        self.control: dict[str, np.ndarray] = {}  # c: zeros once the model's shapes are known
        self.sent: dict[str, np.ndarray] = {}  # x: the trainable arrays of this round's model

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.sent = {k: arrays[k].numpy() for k in self.trainable}
        if not self.control:
            self.control = {k: np.zeros_like(v) for k, v in self.sent.items()}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = ArrayRecord({k: Array(v) for k, v in self.control.items()})
        for message in messages:
            message.content[CONTROL] = control
        return messages

    def problem(self, reply: Message, state: State, samples: float) -> str | None:
        """An update must carry ``control-delta``: one finite array per trainable key, shaped
        and typed as the model's parameter."""
        if CONTROL_DELTA not in reply.content.array_records:
            return f"no {CONTROL_DELTA!r} ArrayRecord"
        delta = _arrays(reply)
        problem = update_problem({k: state[k] for k in self.trainable}, delta)
        return None if problem is None else f"{CONTROL_DELTA}: {problem}"

    def merge(
        self, replies: list[Message], states: list[dict[str, np.ndarray]], samples: list[float]
    ) -> dict[str, np.ndarray]:
        """The global step on the sample-weighted mean; ``c`` takes the round's deltas."""
        average = super().merge(replies, states, samples)
        self.control = control_step(self.control, [_arrays(r) for r in replies], self.num_sites)
        return server_step(self.sent, average, self.trainable, self.server_lr)


def _arrays(reply: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content.array_records[CONTROL_DELTA].items()}
