"""Site training: a site's local training in plain torch, and what a method adds to it.

- :mod:`~fedll.training.train`: the loss, the optimiser and the local training loop;
- :mod:`~fedll.training.continual`: the continual-learning methods' hooks (replay, EWC, ...);
- :mod:`~fedll.training.scaffold` and :mod:`~fedll.training.ditto`: SCAFFOLD's and Ditto's
  site side (their server side is in ``strategies/``).
"""
