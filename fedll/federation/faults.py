"""Faults a scenario injects at a site, so that the strategies' robustness is testable.

A site with a fault (:class:`~fedll.config.options.FaultConfig`) may raise instead of training
(with a probability, or every N-th server round), or train and then send a corrupted update.
Two kinds of corruption:

- caught by the server's update check: NaN weights, a wrong shape, a wrong dtype;
- Byzantine (finite and well-shaped, so no check catches them; only a robust aggregation rule
  limits them): the update's delta negated (``sign-flip``) or scaled (``{scale: F}``), or
  Gaussian noise on the weights (``{gaussian: sigma}``). The delta is taken against the global
  model the site received this round.

Only floating-point tensors are corrupted: integer counters (BatchNorm's
``num_batches_tracked``, step counters) are sent as trained. Every draw is seeded by the site's
seed for the round, which derives from (trial seed, round, site), so a run with faults is as
deterministic as one without.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping

import numpy as np

from fedll.config.options import (
    Corruption,
    CorruptionName,
    FaultConfig,
    GaussianNoise,
    ScaledUpdate,
)

SENDS: tuple[str, ...] = typing.get_args(CorruptionName)
"""The corrupted updates a faulty site can send that are named by a string."""

REJECTED_SENDS: tuple[str, ...] = ("nan", "wrong-shape", "wrong-dtype")
"""The corrupted updates that the server's update check rejects."""

State = Mapping[str, np.ndarray]


class InjectedFault(RuntimeError):
    """A failure the scenario asked for."""


def raises(fault: FaultConfig | None, server_round: int, seed: int) -> bool:
    """Whether the site raises in ``server_round`` (``seed``: the site's seed for it)."""
    if fault is None:
        return False
    if fault.raise_every and server_round % fault.raise_every == 0:
        return True
    if fault.raise_probability <= 0:
        return False
    return bool(np.random.default_rng([seed, 1]).random() < fault.raise_probability)


def lost_rounds(fault: FaultConfig | None, rounds: int) -> np.ndarray:
    """bool (rounds,): whether the site's update of each server round 1..``rounds`` never
    reaches the aggregation rule, whatever the seed: the site raises in that round
    (``raise_probability: 1``, or a round that ``raise_every`` divides, as :func:`raises`
    decides), or it sends what the server's update check rejects (:data:`REJECTED_SENDS`)."""
    lost = np.zeros(rounds, dtype=bool)
    if fault is None:
        return lost
    if fault.raise_probability >= 1 or fault.send in REJECTED_SENDS:
        lost[:] = True
    elif fault.raise_every:
        lost[fault.raise_every - 1 :: fault.raise_every] = True
    return lost


def corrupt(
    trained: State, send: Corruption | None, *, received: State, seed: int
) -> dict[str, np.ndarray]:
    """``trained`` (the site's weights after training) as a faulty site sends it.

    ``received`` is the global model the site received this round and ``seed`` the site's seed
    for the round. ``"nan"`` fills every floating tensor with NaN, ``"wrong-shape"`` drops the
    last value of the first floating tensor, ``"wrong-dtype"`` casts floating tensors to
    float64 (float16 where they already are), ``"sign-flip"`` sends ``received - (trained -
    received)``, ``ScaledUpdate(F)`` sends ``received + F * (trained - received)`` and
    ``GaussianNoise(sigma)`` sends ``trained + N(0, sigma^2)``; None is a copy. The Byzantine
    ones keep every dtype and shape, and leave integer tensors as trained.
    """
    out = {name: np.array(value) for name, value in trained.items()}
    floating = [n for n, v in out.items() if np.issubdtype(v.dtype, np.floating)]
    if send == "sign-flip":
        send = ScaledUpdate(scale=-1.0)
    if isinstance(send, ScaledUpdate):
        for name in floating:
            out[name] = _scaled(out[name], np.asarray(received[name]), send.scale)
    elif isinstance(send, GaussianNoise):
        rng = np.random.default_rng([seed, 2])  # [seed, 1] draws whether the site raises
        for name in floating:
            noise = rng.normal(0.0, send.gaussian, out[name].shape)
            out[name] = (out[name] + noise).astype(out[name].dtype)
    elif send == "nan":
        for name in floating:
            out[name] = np.full_like(out[name], np.nan)
    elif send == "wrong-shape" and floating:
        out[floating[0]] = out[floating[0]].ravel()[:-1]
    elif send == "wrong-dtype":
        for name in floating:
            wrong = np.float16 if out[name].dtype == np.float64 else np.float64
            out[name] = out[name].astype(wrong)
    elif send is not None and send not in SENDS:
        raise ValueError(f"unknown fault {send!r} (known: {', '.join(SENDS)})")
    return out


def _scaled(trained: np.ndarray, received: np.ndarray, factor: float) -> np.ndarray:
    """``received + factor * (trained - received)`` in float64, in ``trained``'s dtype."""
    if received.shape != trained.shape:
        raise ValueError(f"received shape {received.shape}, trained {trained.shape}")
    delta = trained.astype(np.float64) - received.astype(np.float64)
    return (received.astype(np.float64) + factor * delta).astype(trained.dtype)
