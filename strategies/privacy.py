"""Differential privacy of any rule: Flower's four DP wrappers, fitted to a lifelong stream.

A strategy's ``dp`` option (:class:`fedll.config.options.DPOptions`) wraps its rule in
Flower's matching wrapper (:data:`WRAPPERS`): the sites' updates are clipped to an L2 norm
(on the server, or at the site by :func:`clipping_mod`) and the aggregate gets
Gaussian noise of std ``z * C / n`` (McMahan et al. 2018, "Learning differentially private
recurrent language models"; adaptive clipping: Andrew et al. 2021). What a lifelong stream
changes, in :class:`StreamPrivacy` (each wrapper here is Flower's with it mixed in):

- **n per round, fixed by the plan.** Flower's wrapper takes ``num_sampled_clients`` once;
  in a stream the planned sites change from round to round. ``n`` is set at every round to
  the sites the rule is shown (the round's planned arrivals, fixed before the trial starts).
  With fixed clipping over a mean (``public_n``) it stays that public ``n`` whatever arrives,
  as in McMahan et al. 2018: the release is the clipped updates' *sum* over ``n`` plus noise
  of std ``z * C / n``, an update that failed or was rejected counting as zero, and a round
  whose every update is lost still releases (the model plus noise). The sum changes by at
  most ``C`` when one site's whole update is added or removed, so the release is the
  Gaussian mechanism of multiplier ``z`` under add/remove adjacency, and how many updates
  arrived is not revealed. (Dividing by the updates that arrived, as fedll did before,
  reveals that count, and adding or removing a site then moves the mean by up to ``2C / n``.)
  Adaptive clipping and rules that are not a mean keep ``n`` to the updates that reach the
  rule; no ε is stated for them.
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
Flower's RDP accountant: every release is a Gaussian mechanism of multiplier ``z`` under
add/remove of one site's whole update (site-level DP, the round's ``n`` fixed by the plan),
composed without sampling amplification (``no-amplification``, which Flower's fixed wrappers
require: every planned site is asked each round, the arrivals follow a plan, not a random
sample), over the population of the federation's sites, at the option's ``delta``. The
trial's ε composes all its releases: the ε of a site that trains in every round. A site that
trains in ``k`` rounds took part in ``k`` releases only, and its own ε is that of ``k``
(:func:`fedll.report.epsilon.site_privacy`). Other rules (a median or Krum is not a mean:
``C / n`` is not its sensitivity) and adaptive clipping (Flower gives no accountant for it)
have no ε.

**The site side** (:func:`clipping_mod`, a mod of the one ClientApp): a strategy with ``dp:
{side: client}`` runs Flower's client-side DP wrapper, which puts the clipping norm into each
train message's config (``clipping_norm``); the mod then hands the message to Flower's
``fixedclipping_mod`` or ``adaptiveclipping_mod`` (by :data:`KEY_CLIPPING`, which the wrappers
here add), which clips the site's update ``w_site - w_global`` to that norm before it leaves
the site. Any other message passes untouched, so one ClientApp serves every trial. The model's
integer counters are not clipped: Flower's mods would scale them as floats (NumPy refuses that
in place for an int64 array), and they count the site's optimiser steps, which its
``num-examples`` tells the server anyway. They are taken out of what Flower's mod sees and put
back, unchanged, in the reply.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)

from fedll.config.options import DPOptions
from fedll.federation.flower_private import (
    KEY_CLIPPING_NORM,
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    RdpAccountant,
    SamplingMethod,
)
from fedll.federation.messages import MODEL
from strategies.lifelong import WEIGHT

logger = logging.getLogger(__name__)

KEY_CLIPPING = "dp-clipping"
"""The config key naming the clipping a site's mod applies (``fixed`` or ``adaptive``);
Flower's client-side wrappers set ``clipping_norm`` for either."""


class StreamPrivacy:
    """What a lifelong stream changes in a Flower DP wrapper (see the module's docstring);
    mixed in before the wrapper. ``counters``: the model's integer counters (by name);
    ``seed``: the trial's, for the noise; ``clipping``: ``fixed`` or ``adaptive``;
    ``public_n``: the round's ``n`` stays the planned one whatever arrives (fixed clipping
    over a mean: the mechanism the accountant's ε holds for)."""

    state_numbers = ("clipping_norm",)  # adaptive clipping learns it; checkpoints keep it

    def __init__(
        self,
        *args: Any,
        counters: Iterable[str] = (),
        seed: int = 0,
        clipping: str = "fixed",
        public_n: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.counters = frozenset(counters)
        self.seed = seed
        self.clipping = clipping
        self.public_n = public_n
        # the lifelong layer hands the rule a round whose every update was lost
        self.releases_without_updates = public_n
        self.global_counters: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.num_sampled_clients = max(1, len(grid.get_node_ids()))
        self.global_counters = {k: arrays[k].numpy() for k in self.counters if k in arrays}
        if self.public_n:  # the model an update is measured from (the server side keeps it too)
            self.current_arrays = arrays
        config[KEY_CLIPPING] = self.clipping
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [self._prepared(reply) for reply in replies]
        planned = self.num_sampled_clients
        if self.public_n and not replies:
            return self._noise_alone(server_round), None
        if replies:  # Flower's wrapper averages what arrived, its noise at std z * C / arrived
            self.num_sampled_clients = len(replies)
        try:
            with seeded_numpy(self.seed, server_round):
                arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        finally:
            if self.public_n:
                self.num_sampled_clients = planned
        if self.public_n and arrays is not None and len(replies) < planned:
            arrays = self._over_planned(arrays, len(replies) / planned)
        return arrays, metrics

    def _over_planned(self, aggregate: ArrayRecord, share: float) -> ArrayRecord:
        """Flower's release over the ``m`` updates that arrived, ``w + S / m + N(0, (zC/m)^2)``,
        as the release over the ``n`` planned: ``w + S / n + N(0, (zC/n)^2)`` (``share`` =
        m / n; the update and its noise scaled alike), a missing update counting as zero."""
        current = self.current_arrays
        scaled = {}
        for key, array in aggregate.items():
            value, base = array.numpy(), current[key].numpy()
            scaled[key] = Array(np.asarray(base + (value - base) * share, dtype=value.dtype))
        return ArrayRecord(scaled)

    def _noise_alone(self, server_round: int) -> ArrayRecord:
        """The release of a round whose every update was lost: the model plus the noise of
        ``n`` planned updates (a sum of zero updates), composed like any release."""
        logger.warning(
            "round %d: no update reached the DP rule; it releases the model plus noise "
            "(n = %d planned)",
            server_round,
            self.num_sampled_clients,
        )
        event = self._pop_pending_event(server_round)  # type: ignore[attr-defined]
        with seeded_numpy(self.seed, server_round):
            released = self._add_noise_to_aggregated_arrays(self.current_arrays)  # type: ignore[attr-defined]
        self._compose_release(event)  # type: ignore[attr-defined]
        return released

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


def is_mean(rule: Strategy) -> bool:
    """Whether ``rule`` aggregates with Flower's ``FedAvg.aggregate_train``: under DP (every
    weight 1) the mean whose sum has sensitivity ``C``, as Flower's accountant requires."""
    return isinstance(rule, FedAvg) and type(rule).aggregate_train is FedAvg.aggregate_train


def accountant_for(options: DPOptions, rule: Strategy, population: int) -> RdpAccountant | None:
    """Flower's RDP accountant for ``rule`` under ``options``, or None where ε cannot be
    stated: adaptive clipping, no noise, or a rule that is not a mean (:func:`is_mean`).
    Add/remove of one site's whole update, no sampling amplification (module docstring)."""
    if options.clipping != "fixed" or options.noise_multiplier <= 0 or not is_mean(rule):
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
    public_n = options.clipping == "fixed" and is_mean(rule)
    common = {"counters": counters, "seed": seed, "clipping": options.clipping,
              "public_n": public_n}  # fmt: skip
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


# -- the site side -------------------------------------------------------------------------


def clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's client-side clipping mod for a train message whose config asks for it."""
    if msg.metadata.message_type != MessageType.TRAIN or msg.has_error():
        return call_next(msg, context)
    configs = list(msg.content.config_records.values())
    if len(configs) != 1 or KEY_CLIPPING_NORM not in configs[0]:
        return call_next(msg, context)
    adaptive = configs[0].get(KEY_CLIPPING) == "adaptive"
    flower_mod = adaptiveclipping_mod if adaptive else fixedclipping_mod
    received = msg.content
    model = received.array_records[MODEL]
    counters = [k for k, a in model.items() if not _floating(a.dtype)]
    if not counters:
        return flower_mod(msg, context, call_next)
    kept: dict[str, ArrayRecord] = {}

    def trained(inner: Message, inner_context: Context) -> Message:
        inner.content = received  # the site trains the whole model
        reply = call_next(inner, inner_context)
        if not reply.has_error() and MODEL in reply.content.array_records:
            kept[MODEL] = reply.content.array_records[MODEL]
            reply.content[MODEL] = _without(kept[MODEL], counters)
        return reply

    msg.content = RecordDict({**dict(received.items()), MODEL: _without(model, counters)})
    reply = flower_mod(msg, context, trained)
    if reply.has_error() or MODEL not in kept:
        return reply
    clipped = reply.content.array_records[MODEL]
    reply.content[MODEL] = ArrayRecord(
        {k: kept[MODEL][k] if k in counters else clipped[k] for k in kept[MODEL]}
    )
    return reply


def _without(record: ArrayRecord, names: list[str]) -> ArrayRecord:
    return ArrayRecord({k: a for k, a in record.items() if k not in names})


def _floating(dtype: str) -> bool:
    return bool(np.issubdtype(np.dtype(dtype), np.floating))
