"""Differential privacy of any rule: Flower's four DP wrappers, fitted to a lifelong stream.

A strategy's ``dp`` option (:class:`fedll.config.options.DPOptions`) wraps its rule in
Flower's matching wrapper (:data:`WRAPPERS`): the sites' updates are clipped to an L2 norm
(on the server, or at the site by :func:`sites.privacy.clipping_mod`) and the aggregate gets
Gaussian noise of std ``z * C / n`` (McMahan et al. 2018, "Learning differentially private
recurrent language models"; adaptive clipping: Andrew et al. 2021). What a lifelong stream
changes, in :class:`StreamPrivacy` (each wrapper here is Flower's with it mixed in):

- **n varies per round.** Flower's wrapper takes ``num_sampled_clients`` once; in a stream
  the arriving sites change from round to round. ``n`` is set at every round to the sites
  the rule is shown (the round's arrivals), and at aggregation to the updates that reach
  the rule (a site that failed or was rejected is not averaged): the noise is then
  calibrated to the mean actually released, whose sensitivity is ``C / n``. A fixed ``n``
  (the planned maximum) would under-noise every smaller round.
- **Uniform weights.** ``C / n`` bounds the sensitivity of the *unweighted* mean of
  ``n`` clipped updates only, and Flower's accountant refuses unequal weights: with DP every
  update weighs 1 (its ``num-examples`` is set to 1 for the rule).
- **Counters.** The lifelong layer shows the rule integer counters (BatchNorm's
  ``num_batches_tracked``) as floats; their change is the number of optimiser steps, tens
  per round, which would dominate a clipping norm of 1. The rule sees them unchanged from
  the global model (update 0); the layer puts back the sites' largest value (``conform``).
  They count a site's steps, no more than the ``num-examples`` a reply carries anyway, which
  Flower's DP does not protect either.
- **Seeded noise.** Flower draws the noise from NumPy's global generator; each round's
  aggregation runs with it seeded by ``(seed, round)`` and restored after, so a trial is
  reproducible and a resumed one draws what the uninterrupted one drew.

**Accounting** (:func:`accountant_for`): fixed clipping with ``z > 0`` over a rule that
aggregates with Flower's ``FedAvg.aggregate_train`` (``fedavg``, ``fedbn``, ``fedprox``) gets
Flower's RDP accountant: every release is a Gaussian mechanism of multiplier ``z``, composed
without sampling amplification (``no-amplification``, which Flower's fixed wrappers require:
the arrivals follow a plan, not a random sample), over the population of the federation's
sites, at the option's ``delta``. Other rules (a median or Krum is not a mean: ``C / n`` is not
its sensitivity) and adaptive clipping (Flower gives no accountant for it) have no ε.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)
from flwr.supercore.privacy_accounting import (
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from fedll.config.options import DPOptions
from strategies.lifelong import WEIGHT

logger = logging.getLogger(__name__)

KEY_CLIPPING = "dp-clipping"
"""The config key naming the clipping a site's mod applies (``fixed`` or ``adaptive``);
Flower's client-side wrappers set ``clipping_norm`` for either."""


class StreamPrivacy:
    """What a lifelong stream changes in a Flower DP wrapper (see the module's docstring);
    mixed in before the wrapper. ``counters``: the model's integer counters (by name);
    ``seed``: the trial's, for the noise; ``clipping``: ``fixed`` or ``adaptive``."""

    state_numbers = ("clipping_norm",)  # adaptive clipping learns it; checkpoints keep it

    def __init__(
        self,
        *args: Any,
        counters: Iterable[str] = (),
        seed: int = 0,
        clipping: str = "fixed",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.counters = frozenset(counters)
        self.seed = seed
        self.clipping = clipping
        self.global_counters: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.num_sampled_clients = max(1, len(grid.get_node_ids()))
        self.global_counters = {k: arrays[k].numpy() for k in self.counters if k in arrays}
        config[KEY_CLIPPING] = self.clipping
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [self._prepared(reply) for reply in replies]
        if replies:
            self.num_sampled_clients = len(replies)
        with seeded_numpy(self.seed, server_round):
            return super().aggregate_train(server_round, replies)  # type: ignore[misc]

    def _prepared(self, reply: Message) -> Message:
        """``reply`` with weight 1 and the global model's counters (update 0)."""
        if reply.has_error():
            return reply
        content = reply.content
        for name, record in list(content.metric_records.items()):
            if WEIGHT in record:
                content[name] = MetricRecord({**dict(record), WEIGHT: 1})
        for name, record in list(content.array_records.items()):
            if any(k in record for k in self.global_counters):
                content[name] = ArrayRecord(
                    {
                        k: Array(self.global_counters[k]) if k in self.global_counters else a
                        for k, a in record.items()
                    }
                )
        return reply


class ServerSideFixedClipping(StreamPrivacy, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping over a lifelong stream."""


class ClientSideFixedClipping(StreamPrivacy, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed clipping over a lifelong stream."""


class ServerSideAdaptiveClipping(StreamPrivacy, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping over a lifelong stream."""


class ClientSideAdaptiveClipping(StreamPrivacy, DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping over a lifelong stream."""


WRAPPERS: Mapping[tuple[str, str], type[Strategy]] = {
    ("server", "fixed"): ServerSideFixedClipping,
    ("client", "fixed"): ClientSideFixedClipping,
    ("server", "adaptive"): ServerSideAdaptiveClipping,
    ("client", "adaptive"): ClientSideAdaptiveClipping,
}
"""(side, clipping) -> the wrapper."""


def accountant_for(options: DPOptions, rule: Strategy, population: int) -> RdpAccountant | None:
    """Flower's RDP accountant for ``rule`` under ``options``, or None where ε cannot be
    stated: adaptive clipping, no noise, or a rule that does not aggregate with Flower's
    ``FedAvg.aggregate_train`` (the unweighted mean whose sensitivity is ``C / n``)."""
    mean = isinstance(rule, FedAvg) and type(rule).aggregate_train is FedAvg.aggregate_train
    if options.clipping != "fixed" or options.noise_multiplier <= 0 or not mean:
        return None
    return RdpAccountant(
        PrivacyConfig(
            target_delta=options.delta,
            population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )


def private_rule(
    options: DPOptions,
    rule: Strategy,
    counters: Iterable[str],
    population: int,
    seed: int,
) -> Strategy:
    """``rule`` in the DP wrapper ``options`` name; ``population``: the federation's sites
    (Flower's first ``num_sampled_clients``, and the accountant's population)."""
    wrapper = WRAPPERS[options.side, options.clipping]
    common = {"counters": counters, "seed": seed, "clipping": options.clipping}
    if options.clipping == "fixed":
        assert options.clipping_norm is not None  # DPOptions requires it
        accountant = accountant_for(options, rule, population)
        if accountant is None:
            logger.info("dp: %s with %s clipping has no accountant (no ε)", type(rule).__name__,
                        options.clipping)  # fmt: skip
        return wrapper(
            rule,
            options.noise_multiplier,
            options.clipping_norm,
            population,
            accountant=accountant,
            **common,
        )
    adaptive = {
        "initial_clipping_norm": options.initial_clipping_norm,
        "target_clipped_quantile": options.target_quantile,
        "clip_norm_lr": options.clip_norm_lr,
        "clipped_count_stddev": options.clipped_count_stddev,
    }
    given = {k: v for k, v in adaptive.items() if v is not None}
    if "clipped_count_stddev" not in given:  # Flower's default, over the whole federation
        given["clipped_count_stddev"] = population / 20
    return wrapper(rule, options.noise_multiplier, population, **given, **common)


def privacy_spent(rule: Strategy) -> PrivacySpent | None:
    """The ε spent so far (at the accountant's δ) by ``rule`` or a strategy it wraps, or None
    where none keeps an accountant."""
    part: Any = rule
    while isinstance(part, Strategy):
        if (accountant := getattr(part, "accountant", None)) is not None:
            return accountant.get_privacy_spent()
        part = getattr(part, "strategy", None)
    return None


@contextmanager
def seeded_numpy(seed: int, server_round: int) -> Iterator[None]:
    """NumPy's global generator seeded by ``(seed, server_round)`` (Flower draws DP noise
    from it), put back as it was after."""
    saved = np.random.get_state()
    np.random.seed([seed, server_round])
    try:
        yield
    finally:
        np.random.set_state(saved)
