"""Ditto's site side (Li et al., ICML 2021): a personalised model beside the global one.

Each site keeps a personalised model ``v`` (in its ``context.state``, initialised from the
first global model it receives). In every round it trains, the site trains the global model
as FedAvg asks, and ``v`` on the same slices with the loss plus ``lam / 2 ||v - w||^2``, ``w``
the global model it received (Algorithm 1, the personalised step, as a proximal term over the
trainable parameters: :class:`fedll.training.continual.ProximalTerm` with ``w`` as its anchor).
``v`` trains with a fresh optimiser each round (the kept moments, where the scenario keeps them, are
the global model's) and without the CL method's terms: the CL method's state follows the
global model. ``v`` is sent back for evaluation only; the server never aggregates it.

Pure torch: the ClientApp turns Flower records into these tensors and back.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedll.config.schema import TrainingConfig
from fedll.training.continual import ProximalTerm
from fedll.training.train import TrainResult, train_local


def train_personal(
    personal: nn.Module,
    received: Mapping[str, torch.Tensor],
    images: np.ndarray,
    masks: np.ndarray,
    cfg: TrainingConfig,
    seed: int,
    lam: float,
    modalities: np.ndarray | None = None,
) -> TrainResult:
    """Train the personalised model ``personal`` in place on ``images`` / ``masks``
    (N, 1, H, W), its loss plus ``lam / 2 * sum ||v - received||^2`` over the parameters that
    ``received`` (the global model the site received, by parameter name) holds; mini-batches
    in the order of ``seed``, a fresh optimiser; ``modalities`` as for
    :func:`~fedll.training.train.train_local`."""
    anchor = {name: tensor.detach().clone() for name, tensor in received.items()}
    cfg = cfg.model_copy(update={"optimizer_state": "reset"})
    hooks = [ProximalTerm(lam, anchor)]
    return train_local(personal, images, masks, cfg, seed, None, hooks, modalities)
