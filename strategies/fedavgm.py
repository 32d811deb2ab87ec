"""FedAvgM for a lifelong stream (Hsu et al., "Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification", 2019): server momentum on the average."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from strategies.aggregation import server_momentum
from strategies.fedavg import LifelongFedAvg
from strategies.replies import Update


class LifelongFedAvgM(LifelongFedAvg):
    """The sample-weighted average, then a server SGD step with momentum on every trainable
    tensor (:func:`strategies.aggregation.server_momentum`); buffers (running statistics,
    counters) take the average. ``server_lr=1, server_momentum=0`` is FedAvg. The velocity is
    the strategy's state; a round without an accepted update leaves it unchanged.
    """

    def __init__(
        self, *args: Any, server_lr: float = 1.0, server_momentum: float = 0.9, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.server_lr = float(server_lr)
        self.server_momentum = float(server_momentum)
        self.velocity: dict[str, np.ndarray] | None = None

    def checkpoint_state(self) -> dict[str, Any]:
        velocity = {} if self.velocity is None else dict(self.velocity)
        return {**super().checkpoint_state(), "velocity": velocity}

    def restore_state(self, state: Mapping[str, Any]) -> None:
        super().restore_state(state)
        self.velocity = dict(state["velocity"]) or None

    def merge(self, server_round: int, updates: Sequence[Update]) -> dict[str, np.ndarray]:
        average = super().merge(server_round, updates)
        keys = sorted(k for k in self.layout.trainable if self.layout.groups.get(k) != "counter")
        new, self.velocity = server_momentum(
            self.current, average, self.velocity, keys, self.server_lr, self.server_momentum
        )
        return new
