"""SCAFFOLD (Karimireddy et al., ICML 2020): stochastic controlled averaging, both sides.

**The server** (:class:`Scaffold`) keeps a control variate ``c`` (one array per trainable
parameter, zeros at the start) and sends it to the round's sites with the global model ``x``
(the :data:`CONTROL` ArrayRecord). Each site corrects its gradients by ``c - c_i`` and replies
with its model ``y_i`` and the change of its own control variate ``delta c_i``
(:data:`CONTROL_DELTA`). The server then steps

- ``x <- x + server_lr * (mean_i y_i - x)`` over the trainable parameters, the mean weighted by
  sample count as in FedAvg (the paper's mean is uniform; weighted, ``server_lr = 1`` is
  FedAvg's model exactly); buffers (running statistics) are averaged and counters kept by
  max, as FedAvg does;
- ``c <- c + |S| / N * mean_i delta c_i`` (uniform, as in the paper), ``S`` the round's
  accepted updates and ``N`` the sites of the federation.

``c`` is the rule's state: the lifelong layer's checkpoints keep it
(:func:`strategies.rule_state.rule_state`).

**The site** (:class:`ScaffoldSite`, built by :func:`scaffold_site` from a train message that
carries ``c``) keeps its own ``c_i`` in its context state (:data:`SITE_CONTROL`; zeros before
its first round) between its rounds. While it trains, every gradient of a trainable parameter
is corrected by ``c - c_i`` (Algorithm 1, line 10: ``y <- y - lr (g_i(y) - c_i + c)``); after
its ``K`` optimiser steps it updates its control variate by the paper's option II,
``c_i+ = c_i - c + (x - y_i) / (K lr)``, and sends the difference ``delta c_i = c_i+ - c_i``
(:func:`control_update`, :class:`ControlVariates`: plain torch and NumPy).

The paper assumes plain SGD. With Adam (fedll's default optimiser) or SGD with momentum the
corrected gradient goes into the optimiser's moments, and ``(x - y_i) / (K lr)`` is no longer
the mean gradient the estimate assumes: the correction still works against the drift, but it
is SCAFFOLD's update only for ``training.optimizer: sgd`` with ``momentum: 0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from torch import nn

from fedll.config.instruction import TrainInstruction
from fedll.training.train import Arrays, SitePart, TrainingHook, model_device
from strategies.aggregation import State, update_problem
from strategies.fedavg import PreciseFedAvg

Named = Mapping[str, np.ndarray]

CONTROL = "control"
"""The ArrayRecord of the server's control variate ``c`` in a train message."""
CONTROL_DELTA = "control-delta"
"""The ArrayRecord of a site's ``delta c_i`` in its reply."""
SITE_CONTROL = "scaffold-control"
"""A site's control variate ``c_i`` in its kept context state (a name of fedll's site-state
and checkpoint formats: renaming it breaks resuming from kept state)."""


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


def control_update(
    site: Named, server: Named, received: Named, trained: Named, steps: int, lr: float
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Option II of SCAFFOLD: the site's new control variate and its change, per key of
    ``server``: ``c_i+ = c_i - c + (x - y_i) / (K lr)`` and ``c_i+ - c_i``, with ``c_i``
    (``site``; zeros where it has no entry), ``c`` (``server``), ``x`` (``received``),
    ``y_i`` (``trained``), ``K = steps`` and ``lr``. Computed in float64, returned in the
    dtype of ``server``."""
    if steps < 1 or lr <= 0:
        raise ValueError(f"control_update needs steps >= 1 and lr > 0, got {steps} and {lr}")
    new, delta = {}, {}
    for name, c in server.items():
        c64 = np.asarray(c, dtype=np.float64)
        c_i = np.asarray(site[name], dtype=np.float64) if name in site else np.zeros_like(c64)
        drift = np.asarray(received[name], np.float64) - np.asarray(trained[name], np.float64)
        updated = c_i - c64 + drift / (steps * lr)
        dtype = np.asarray(c).dtype
        new[name] = updated.astype(dtype)
        delta[name] = (updated - c_i).astype(dtype)
    return new, delta


class ControlVariates(TrainingHook):
    """SCAFFOLD's gradient correction while the site trains and, after training, its control
    variate update (:func:`control_update`): a :class:`fedll.training.train.TrainingHook`.

    ``server``: the server's ``c`` (parameter name -> array); ``site``: the site's ``c_i``
    (empty before its first round: zeros); ``lr``: the training learning rate. After
    training, :attr:`site_control` is ``c_i+`` and :attr:`delta` is ``c_i+ - c_i``. A
    parameter without a gradient in a step (unused by the forward pass) is not corrected.
    """

    def __init__(self, server: Named, site: Named, lr: float) -> None:
        self.server = {k: np.asarray(v) for k, v in server.items()}
        self.site = {k: np.asarray(v) for k, v in site.items()}
        self.lr = float(lr)
        self.steps = 0
        self.received: dict[str, np.ndarray] = {}
        self.correction: dict[str, torch.Tensor] = {}
        # until a step is taken (a site with no slices trains nothing): c_i is kept
        self.site_control = dict(self.site)
        self.delta = {n: np.zeros_like(c) for n, c in self.server.items()}

    def before_training(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        if missing := sorted(set(self.server) - set(params)):
            raise ValueError(f"the server's control variate names {missing[0]!r}, not a parameter")
        device = model_device(model)
        self.received = {n: params[n].detach().cpu().numpy().copy() for n in self.server}
        self.correction = {
            n: torch.as_tensor(c - self.site.get(n, 0.0), dtype=params[n].dtype).to(device)
            for n, c in self.server.items()
        }
        self.steps = 0

    def before_step(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if p.grad is not None and name in self.correction:
                p.grad.add_(self.correction[name])
        self.steps += 1

    def after_training(
        self,
        model: nn.Module,
        images: np.ndarray,
        masks: np.ndarray,
        modalities: np.ndarray | None = None,
    ) -> None:
        if self.steps == 0:
            return
        trained = {n: p.detach().cpu().numpy() for n, p in model.named_parameters()}
        self.site_control, self.delta = control_update(
            self.site, self.server, self.received, trained, self.steps, self.lr
        )


class ScaffoldSite(SitePart):
    """SCAFFOLD's site part: :class:`ControlVariates` while the global model trains, then
    ``delta c_i`` for the reply and ``c_i+`` for the site's state."""

    def __init__(self, control: ControlVariates) -> None:
        self.control = control

    def hooks(self) -> list[TrainingHook]:
        return [self.control]

    def finish(
        self,
        instruction: TrainInstruction,
        images: np.ndarray,
        masks: np.ndarray,
        modalities: np.ndarray | None,
        device: torch.device,
    ) -> tuple[dict[str, Arrays], dict[str, Arrays]]:
        return {CONTROL_DELTA: self.control.delta}, {SITE_CONTROL: self.control.site_control}


def scaffold_site(
    content: RecordDict, state: RecordDict, instruction: TrainInstruction
) -> ScaffoldSite | None:
    """The site part of a train message that carries the server's ``c`` (None without one),
    with the site's ``c_i`` from its kept ``state``."""
    if CONTROL not in content.array_records:
        return None
    site = state.get(SITE_CONTROL, ArrayRecord())
    return ScaffoldSite(
        ControlVariates(
            {k: v.numpy() for k, v in content.array_records[CONTROL].items()},
            {k: v.numpy() for k, v in site.items()},
            instruction.training.lr,
        )
    )
