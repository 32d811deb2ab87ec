"""Client-side clipping for differential privacy, as a mod of the one ClientApp.

A strategy with ``dp: {side: client}`` runs Flower's client-side DP wrapper, which puts the
clipping norm into each train message's config (``clipping_norm``); :func:`clipping_mod`
then hands the message to Flower's ``fixedclipping_mod`` or ``adaptiveclipping_mod`` (by the
``dp-clipping`` key fedll's wrappers add), which clips the site's update ``w_site - w_global``
to that norm before it leaves the site. Any other message passes untouched, so one
ClientApp serves every trial.

The model's integer counters (BatchNorm's ``num_batches_tracked``) are not clipped: Flower's
mods would scale them as floats (NumPy refuses that in place for an int64 array), and they
count the site's optimiser steps, which its ``num-examples`` tells the server anyway. They
are taken out of what Flower's mod sees and put back, unchanged, in the reply.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from fedll.federation.flower_private import KEY_CLIPPING_NORM
from fedll.federation.messages import MODEL
from strategies.privacy import KEY_CLIPPING


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
