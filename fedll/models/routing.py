"""How a dynamic layer routes, in one frozen object, and what every router shares.

:class:`RoutingSpec` carries everything that configures a model's routers (the ACP of
:mod:`~fedll.models.attention` or the per-modality router of
:mod:`~fedll.models.modality_routing`): its fields are the Dy-CNN builder's keyword arguments
of the same names (the YAML vocabulary), whose defaults are the spec's. The builder makes one
spec and every layer, and every router in it, reads that one.

Also here: the dynamic modes (:data:`MODES`), the routings (:data:`ROUTINGS`), the ACP's
statistics (:data:`ACP_STATS`), what a router predicts for a batch (:class:`Routing`) and the
regulariser on it (:func:`routing_regulariser`, weighted by :class:`RoutingLossWeights`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from fedll.data import MODALITIES
from fedll.models.arguments import ArgumentError

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

    @classmethod
    def of(cls, weights: Mapping[str, float] | RoutingLossWeights | None) -> RoutingLossWeights:
        """The weights of a mapping ``{"confidence": w, "balance": w}`` (missing keys are 0),
        of None (both 0), or ``weights`` itself."""
        if weights is None:
            return cls()
        if isinstance(weights, RoutingLossWeights):
            return weights
        return cls(**{term: float(weight) for term, weight in weights.items()})


@dataclass(frozen=True)
class RoutingSpec:
    """How every dynamic layer of a model predicts its kernel coefficients.

    routing: one of :data:`ROUTINGS`: ``"learned"`` (the ACP, from the input) or by the case's
        known modality, ``"modality-soft"`` (learned logits per modality) or
        ``"modality-hard"`` (a fixed, equal share of the kernels per modality).
    acp_stats: the ACP's pooled statistics (:data:`ACP_STATS`), concatenated in this order.
    quantiles: the levels read by the ``"quantiles"`` statistic.
    hidden_ratio, min_hidden: the ACP's hidden width ``max(int(C_in * hidden_ratio),
        min_hidden)``.
    top_k: keep only the k largest coefficients (hard routing with a straight-through
        gradient, :func:`~fedll.models.attention.straight_through_top_k`); None: all.
    temperature_start, temperature_end, anneal_steps: the softmax temperature's schedule
        (:func:`~fedll.models.temperature.temperature_at`); ``temperature_end < 1`` sharpens.
    routing_loss_weights: the weights of :func:`routing_regulariser` on each layer's
        coefficients.
    freeze_routing_after: R, the routing parameters train in federated rounds 1..R only
        (None: always); read by :func:`~fedll.models.inspection.freeze_routing`.
    num_modalities: M, the modalities a modality router tells apart (:data:`MODALITIES`).

    The ACP's own fields (:attr:`ACP_ONLY`) must keep their defaults with modality routing:
    a cross-argument check, so an :class:`~fedll.models.arguments.ArgumentError` naming the
    field, as the builder's own; every other bad value is a ``ValueError`` whose message starts
    with the builder argument's name, as a layer's.
    """

    ACP_ONLY: ClassVar[tuple[str, ...]] = (
        "acp_stats",
        "quantiles",
        "hidden_ratio",
        "min_hidden",
        "top_k",
    )

    routing: str = "learned"
    acp_stats: tuple[str, ...] = ("mean",)
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    hidden_ratio: float = 0.25
    min_hidden: int = 4
    top_k: int | None = None
    temperature_start: float = 30.0
    temperature_end: float = 1.0
    anneal_steps: int = 100
    routing_loss_weights: RoutingLossWeights = RoutingLossWeights()
    freeze_routing_after: int | None = None
    num_modalities: int = len(MODALITIES)

    def __post_init__(self) -> None:
        self._check()
        # one type per field, so that equal specs compare (and hash) equal
        object.__setattr__(self, "acp_stats", tuple(self.acp_stats))
        object.__setattr__(self, "quantiles", tuple(float(q) for q in self.quantiles))
        object.__setattr__(self, "temperature_start", float(self.temperature_start))
        object.__setattr__(self, "temperature_end", float(self.temperature_end))
        object.__setattr__(self, "anneal_steps", int(self.anneal_steps))

    def _check(self) -> None:
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing: {self.routing!r} is not one of {ROUTINGS}")
        if self.routing != "learned":
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name in self.ACP_ONLY:
                if _differs(getattr(self, name), defaults[name]):
                    raise ArgumentError(
                        name, f"configures the ACP; routing {self.routing!r} has none (use learned)"
                    )
        last_round = self.freeze_routing_after
        if last_round is not None and last_round < 0:
            raise ValueError(f"freeze_routing_after: must be >= 0, got {last_round}")
        stats = self.acp_stats
        if not stats or any(s not in ACP_STATS for s in stats):
            raise ValueError(
                f"acp_stats: {list(stats)!r} must be a non-empty subset of {ACP_STATS}"
            )
        if self.temperature_start <= 0 or self.temperature_end <= 0:
            raise ValueError(
                "temperature_start/end: must be > 0, got "
                f"{self.temperature_start}, {self.temperature_end}"
            )
        if self.anneal_steps < 0:
            raise ValueError(f"anneal_steps: must be >= 0, got {self.anneal_steps}")
        if not self.quantiles or not all(0.0 <= q <= 1.0 for q in self.quantiles):
            raise ValueError(f"quantiles: must be levels in [0, 1], got {list(self.quantiles)!r}")
        if self.hidden_ratio <= 0 or self.min_hidden < 1:
            raise ValueError(
                "hidden_ratio/min_hidden: must be > 0 and >= 1, got "
                f"{self.hidden_ratio}, {self.min_hidden}"
            )
        if self.num_modalities < 1:
            raise ValueError(f"num_modalities: must be >= 1, got {self.num_modalities}")


def _differs(value: object, default: object) -> bool:
    """Whether a field's value is not its default, a sequence compared as a tuple."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(value) != default
    return value != default


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
