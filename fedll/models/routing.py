"""The vocabulary of routing, shared by every router: the dynamic modes (:data:`MODES`), the
routings (:data:`ROUTINGS`), the ACP's statistics (:data:`ACP_STATS`), what a router predicts
for a batch (:class:`Routing`) and the regulariser on it (:func:`routing_regulariser`, weighted
by :class:`RoutingLossWeights`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

ACP_STATS: tuple[str, ...] = ("mean", "std", "max", "quantiles")
"""The pooled per-channel statistics the ACP can read, concatenated in the order given."""

MODES: tuple[str, ...] = ("bank", "grouped")

ROUTINGS: tuple[str, ...] = ("learned", "modality-soft", "modality-hard")
"""How a dynamic layer chooses its kernel mixture: ``learned`` from the input (the ACP),
``modality-soft`` / ``modality-hard`` from the case's known modality
(:class:`~fedll.models.modality_routing.ModalityCoefficients`)."""


class Routing(NamedTuple):
    """What the ACP predicts for a batch.

    weights: the coefficients that mix the kernels, (B, K) or (B, C_out, G); equal to ``probs``
        unless hard top-k routing is on.
    probs: the soft coefficients softmax(z / tau), same shape, for routing regularisers.
    """

    weights: torch.Tensor
    probs: torch.Tensor


@dataclass(frozen=True)
class RoutingLossWeights:
    """Weights of the routing regulariser (0 switches a term off).

    confidence: mean per-sample entropy of the coefficients (low = confident routing).
    balance: KL divergence of the batch-mean coefficients from uniform (low = all kernels used).
    """

    confidence: float = 0.0
    balance: float = 0.0

    @property
    def active(self) -> bool:
        return self.confidence != 0.0 or self.balance != 0.0


def routing_regulariser(probs: torch.Tensor, weights: RoutingLossWeights) -> torch.Tensor:
    """``confidence * H_sample + balance * KL(mean_B probs || uniform)`` in nats, a scalar.

    ``probs`` is (B, K) or (B, C_out, G), normalised over the last axis; for the grouped shape
    both terms are averaged over output channels.
    """
    k = probs.shape[-1]
    log_p = probs.clamp_min(1e-12).log()
    confidence = -(probs * log_p).sum(-1).mean()
    mean = probs.mean(0)
    balance = (mean * (mean.clamp_min(1e-12).log() + math.log(k))).sum(-1).mean()
    return weights.confidence * confidence + weights.balance * balance
