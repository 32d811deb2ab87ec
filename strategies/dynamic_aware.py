"""Dynamic-aware aggregation: each dynamic kernel averaged by the attention sites gave it.

A site reports, with its update, the attention mass its training samples gave each kernel
of each dynamic layer (``mass/<layer>`` in the reply's ``attention`` ConfigRecord, from
:func:`fedll.train.train_local`). A kernel that one site's data routed to and another's did
not then takes mostly the first site's version of it, instead of the sample-weighted mean;
ACP parameters, normalisation and everything else are averaged by sample count. On a static
model this is FedAvg.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import ConfigRecord, Message

from strategies.aggregation import State, attention_masses, attention_weighted_average
from strategies.fedavg import LifelongFedAvg
from strategies.replies import Update


class DynamicAwareFedAvg(LifelongFedAvg):
    """:func:`strategies.aggregation.attention_weighted_average` over the accepted updates.

    An update whose attention mass is missing for a dynamic layer, mis-shaped, negative or
    not finite is rejected like a non-finite update.
    """

    def problem(self, reply: Message, state: State, samples: float) -> str | None:
        problem = super().problem(reply, state, samples)
        if problem is not None:
            return problem
        try:
            self._masses(reply)
        except ValueError as error:
            return str(error)
        return None

    def merge(self, server_round: int, updates: Sequence[Update]) -> dict[str, np.ndarray]:
        return attention_weighted_average(
            [u.state for u in updates],
            [u.samples for u in updates],
            self.layout.groups,
            [self._masses(u.reply) for u in updates],
            {key: layer for key, (layer, _) in self.layout.banks.items()},
        )

    def _masses(self, reply: Message) -> dict[str, np.ndarray]:
        shapes = dict(self.layout.banks.values())
        return attention_masses(reply.content.get("attention", ConfigRecord()), shapes)
