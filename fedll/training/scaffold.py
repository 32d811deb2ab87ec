"""SCAFFOLD's site side (Karimireddy et al., ICML 2020): control variates correct client drift.

The server sends its control variate ``c`` with the global model ``x``; the site keeps its own
``c_i`` (zeros before its first round) between its rounds. While it trains, every gradient of
a trainable parameter is corrected by ``c - c_i`` (Algorithm 1, line 10:
``y <- y - lr (g_i(y) - c_i + c)``); after its ``K`` optimiser steps it updates its control
variate by the paper's option II, ``c_i+ = c_i - c + (x - y_i) / (K lr)``, and sends the
difference ``delta c_i = c_i+ - c_i`` (:func:`control_update`).

The paper assumes plain SGD. With Adam (fedll's default optimiser) or SGD with momentum the
corrected gradient goes into the optimiser's moments, and ``(x - y_i) / (K lr)`` is no longer
the mean gradient the estimate assumes: the correction still works against the drift, but it
is SCAFFOLD's update only for ``training.optimizer: sgd`` with ``momentum: 0``.

Pure torch: the ClientApp turns Flower records into these mappings and back.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedll.training.train import TrainingHook, model_device

Arrays = Mapping[str, np.ndarray]


def control_update(
    site: Arrays, server: Arrays, received: Arrays, trained: Arrays, steps: int, lr: float
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
    """A :class:`fedll.training.train.TrainingHook`: SCAFFOLD's gradient correction and, after
    training, the control variate update (:func:`control_update`).

    ``server``: the server's ``c`` (parameter name -> array); ``site``: the site's ``c_i``
    (empty before its first round: zeros); ``lr``: the training learning rate. After
    training, :attr:`site_control` is ``c_i+`` and :attr:`delta` is ``c_i+ - c_i``. A
    parameter without a gradient in a step (unused by the forward pass) is not corrected.
    """

    def __init__(self, server: Arrays, site: Arrays, lr: float) -> None:
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
