"""A process's random-number generators' states (torch, CUDA, NumPy's global one, Python's),
as plain data a checkpoint keeps and puts back."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np


def rng_states() -> dict[str, Any]:
    """This process's RNG states (torch, CUDA, NumPy's global one, Python's)."""
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state().numpy(),
        "numpy": [kind, keys, int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        states["cuda"] = [s.numpy() for s in torch.cuda.get_rng_state_all()]
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Put back :func:`rng_states`."""
    import torch

    torch.set_rng_state(torch.from_numpy(np.array(states["torch"], dtype=np.uint8)))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.from_numpy(np.array(s)) for s in states["cuda"]])
