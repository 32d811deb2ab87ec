"""Faults a scenario injects at a site, so that the strategies' robustness is testable.

A site with a fault (:class:`~fedll.config.options.FaultConfig`) may raise instead of training
(with a probability, or every N-th server round), or train and then send a corrupted update
(NaN weights, a wrong shape, a wrong dtype). Every draw is seeded by the site's seed for the
round, which derives from (trial seed, round, site), so a run with faults is as deterministic
as one without.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping

import numpy as np

from fedll.config.options import FaultConfig

SENDS: tuple[str, ...] = typing.get_args(
    typing.get_args(FaultConfig.model_fields["send"].annotation)[0]
)
"""The corrupted updates a faulty site can send (the values of ``FaultConfig.send``)."""


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


def corrupt(state: Mapping[str, np.ndarray], send: str | None) -> dict[str, np.ndarray]:
    """``state`` as a faulty site sends it: ``"nan"`` fills every floating tensor with NaN,
    ``"wrong-shape"`` drops the last value of the first floating tensor, ``"wrong-dtype"``
    casts floating tensors to float64 (float16 where they already are); None is a copy."""
    out = {name: np.array(value) for name, value in state.items()}
    floating = [n for n, v in out.items() if np.issubdtype(v.dtype, np.floating)]
    if send == "nan":
        for name in floating:
            out[name] = np.full_like(out[name], np.nan)
    elif send == "wrong-shape" and floating:
        out[floating[0]] = out[floating[0]].ravel()[:-1]
    elif send == "wrong-dtype":
        for name in floating:
            wrong = np.float16 if out[name].dtype == np.float64 else np.float64
            out[name] = out[name].astype(wrong)
    elif send:
        raise ValueError(f"unknown fault {send!r} (known: {', '.join(SENDS)})")
    return out
