"""Site training: a site's local training in plain torch, and what a method adds to it.

- :mod:`~fedll.training.train`: the loss, the optimiser, the local training loop, and the two
  interfaces a method implements: a ``TrainingHook`` (called by the loop) and a strategy's
  ``SitePart`` (called by the ClientApp around the loop; SCAFFOLD's and Ditto's live with their
  server side, in ``strategies/scaffold.py`` and ``strategies/ditto.py``);
- :mod:`~fedll.training.continual`: the continual-learning methods' hooks (replay, EWC, ...).
"""
