"""Dynamic-aware aggregation: each dynamic kernel averaged by the attention sites gave it.

A site reports, with its update, the attention mass its training samples gave each kernel
of each dynamic layer (``mass/<layer>`` in the reply's ``attention`` ConfigRecord, from
:func:`fedll.training.train.train_local`). A kernel that one site's data routed to and another's did
not then takes mostly the first site's version of it, instead of the sample-weighted mean;
ACP parameters, normalisation and everything else are averaged by sample count. On a static
model this is FedAvg. It is a rule like Flower's (:mod:`strategies.lifelong` wraps it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message

from fedll.federation.messages import ATTENTION
from fedll.models.inspection import ModelLayout
from strategies.aggregation import State, attention_masses, attention_weighted_average
from strategies.fedavg import PreciseFedAvg


class DynamicAware(PreciseFedAvg):
    """:func:`strategies.aggregation.attention_weighted_average` over the accepted updates.

    An update whose attention mass is missing for a dynamic layer, mis-shaped, negative or
    not finite cannot be used (:meth:`problem`: the lifelong layer rejects it like a
    non-finite update).
    """

    def __init__(self, layout: ModelLayout, **kwargs: Any) -> None:
        super().__init__(groups=layout.groups, **kwargs)
        self.layout = layout

    def problem(self, reply: Message, state: State, samples: float) -> str | None:
        try:
            self._masses(reply)
        except ValueError as error:
            return str(error)
        return None

    def merge(
        self, replies: list[Message], states: list[dict[str, np.ndarray]], samples: list[float]
    ) -> dict[str, np.ndarray]:
        return attention_weighted_average(
            states,
            samples,
            self.groups,
            [self._masses(r) for r in replies],
            {key: layer for key, (layer, _) in self.layout.banks.items()},
        )

    def _masses(self, reply: Message) -> dict[str, np.ndarray]:
        shapes = dict(self.layout.banks.values())
        return attention_masses(reply.content.get(ATTENTION, ConfigRecord()), shapes)
