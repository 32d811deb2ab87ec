"""FedAvg with float64 accumulation: fedll's rule for ``fedavg`` and ``fedbn``.

Flower's ``FedAvg`` sums each array in its own dtype (float32 for a model); this rule reads
each reply's arrays, averages them by sample count in float64 and casts back
(:func:`strategies.aggregation.weighted_average`), so that an average does not depend on the
order the replies came in beyond the last float32 rounding, and the results of every trial
run before the lifelong layer existed are reproduced bit for bit. Everything else (sampling,
the reply contract, the metrics) is Flower's ``FedAvg``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from fedll.federation.flower_private import check_and_log_replies
from strategies.aggregation import weighted_average
from strategies.replies import read_update


class PreciseFedAvg(FedAvg):
    """Flower's FedAvg, its average accumulated in float64.

    ``groups``: the model's parameter groups (:class:`~fedll.models.ModelLayout`); counters
    keep their largest value. A variant that reads more ArrayRecords from a reply than the
    model names them in ``reply_arrays`` (the lifelong layer lets them through).
    """

    reply_arrays: tuple[str, ...] = ()

    def __init__(self, groups: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups = groups

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Flower's check wants exactly one ArrayRecord; with reply_arrays the lifelong layer
        # has checked the contract, extra records included (strategies.replies)
        valid, _ = check_and_log_replies(
            self, replies, is_train=True, validate=not self.reply_arrays
        )
        if not valid:
            return None, None
        updates = [read_update(reply, self.weighted_by_key) for reply in valid]
        merged = self.merge(valid, [state for state, _ in updates], [n for _, n in updates])
        metrics = self.train_metrics_aggr_fn([r.content for r in valid], self.weighted_by_key)
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in merged.items()}), metrics

    def merge(
        self,
        replies: list[Message],
        states: list[dict[str, np.ndarray]],
        samples: list[float],
    ) -> dict[str, np.ndarray]:
        """The new global state: the sample-weighted mean (variants override this)."""
        return weighted_average(states, samples, self.groups)
