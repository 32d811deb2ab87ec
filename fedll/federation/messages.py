"""The names in fedll's Flower messages and in a site's kept context state, both directions.

A train round is one message each way. Its content is a ``RecordDict`` of named records;
these are the names, each written and read through this module only (what a record holds
is typed elsewhere: the instruction by :class:`fedll.config.instruction.TrainInstruction`
and :mod:`fedll.config.wire`, the metrics by the ClientApp's reply).

Server -> site (``train``): :data:`MODEL` (the global model's arrays) and :data:`CONFIG` (the
site's instruction, flat kebab-case). The handshake (``query.meta``) and its reply carry
:data:`META`.

Site -> server (the reply): :data:`MODEL` (the site's model), :data:`METRICS` (with
:data:`WEIGHT`, the number of training samples a weighted mean uses), :data:`ATTENTION` (a
Dy-CNN's attention masses) and :data:`PERSONAL` (a personalised model, Ditto's, which the
ServerApp evaluates whatever the strategy).

A strategy with a site side names its own records, for both directions, in its module
(SCAFFOLD's control variates in :mod:`strategies.scaffold`, Ditto's kept personalised model
in :mod:`strategies.ditto`).

A site's ``context.state`` (kept between rounds, and on its disk under deployment,
:mod:`fedll.federation.site_state`): :data:`OPTIMIZER_STATE`, :data:`CONTINUAL_STATE`,
:data:`LOCAL_NORM_STATE` and a strategy's site part's own. These live in
another namespace than the instruction's config keys: the state's ``local-norm`` is the
site's own normalisation layers, the instruction's ``local-norm`` whether to keep them.
The values are part of fedll's wire and checkpoint formats: renaming one breaks resuming
from kept state.
"""

from __future__ import annotations

MODEL = "arrays"
"""The ArrayRecord of the model, both ways (Flower's default ``arrayrecord_key``)."""
CONFIG = "config"
"""The ConfigRecord of a site's instruction in a train message."""
META = "meta"
"""The ConfigRecord of the handshake: the server's query and the site's answer."""
METRICS = "metrics"
"""The MetricRecord of a reply's training metrics."""
WEIGHT = "num-examples"
"""The metric that weighs a reply in a weighted mean (Flower's ``weighted_by_key``)."""
ATTENTION = "attention"
"""The ConfigRecord of a Dy-CNN's attention masses in a reply."""
PERSONAL = "personal"
"""The ArrayRecord of a site's personalised model in a reply (Ditto's)."""

OPTIMIZER_STATE = "optimizer"
"""A site's optimiser state (with ``training.optimizer_state: keep``)."""
CONTINUAL_STATE = "continual"
"""A site's continual-learning state (a replay buffer, EWC's Fisher, ...)."""
LOCAL_NORM_STATE = "local-norm"
"""A site's own normalisation layers (with the instruction's ``local_norm``)."""
