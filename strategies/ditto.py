"""Ditto (Li et al., ICML 2021): fair and robust federated learning through personalisation.

The global model is trained and aggregated as FedAvg (fedll's float64 mean). The rule tells
each round's sites to train their personalised model too (``ditto`` and ``ditto-lambda`` in
the config; the site side is :mod:`fedll.training.ditto`); a site replies with its personalised
model in a ``personal`` ArrayRecord, which the rule checks (a reply without a usable one is
rejected) and never aggregates: the ServerApp evaluates it on the site's modality test set
(:mod:`strategies.federation`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedll.federation.messages import PERSONAL
from strategies.aggregation import State, update_problem
from strategies.fedavg import PreciseFedAvg


class Ditto(PreciseFedAvg):
    """FedAvg of the global models; each site's personalised model comes back beside it.

    ``lam``: the proximal weight ``lambda`` of the personalised objective
    ``F_k(v) + lambda / 2 ||v - w||^2``.
    """

    reply_arrays = (PERSONAL,)

    def __init__(self, groups: Mapping[str, str], lam: float = 0.1, **kwargs: Any) -> None:
        super().__init__(groups=groups, **kwargs)
        self.lam = float(lam)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["ditto"] = True
        config["ditto-lambda"] = self.lam
        return super().configure_train(server_round, arrays, config, grid)

    def problem(self, reply: Message, state: State, samples: float) -> str | None:
        """An update must carry its personalised model, shaped and typed as the global one
        and finite."""
        if PERSONAL not in reply.content.array_records:
            return f"no {PERSONAL!r} ArrayRecord"
        personal = {k: v.numpy() for k, v in reply.content.array_records[PERSONAL].items()}
        problem = update_problem(state, personal)
        return None if problem is None else f"{PERSONAL}: {problem}"
