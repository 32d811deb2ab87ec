"""FedProx for a lifelong stream (Li et al., "Federated Optimization in Heterogeneous
Networks", MLSys 2020): the proximal term lives at the sites (see :mod:`fedll.continual`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from strategies.fedavg import LifelongFedAvg


class LifelongFedProx(LifelongFedAvg):
    """FedProx : sites add ``mu / 2 * ||w - w_global||^2`` to their loss.

    As Flower's ``FedProx``: the server only puts ``proximal-mu`` into the training config.
    """

    def __init__(self, *args: Any, mu: float = 0.01, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if mu < 0:
            raise ValueError(f"mu: must be >= 0, got {mu}")
        self.mu = float(mu)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["proximal-mu"] = self.mu
        return super().configure_train(server_round, arrays, config, grid)
