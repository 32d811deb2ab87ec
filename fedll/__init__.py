"""fedll: federated lifelong learning for glioma segmentation (static vs Dy-CNN U-Nets).

The library is plain numpy/torch; Flower's types stay in the apps beside it (``sites/``: the
one ClientApp; ``strategies/``: the ServerApp and the strategies), and Ray's in
:mod:`fedll.sweep`.

- :mod:`fedll.config`: scenarios (schema, rules, grid, loading, the site instruction);
- :mod:`fedll.data`: cohorts (synthetic, BraTS / MSD / manifest), slices, the run's split;
- :mod:`fedll.stream` and :mod:`fedll.planning`: arrivals over rounds, and each site's work;
- :mod:`fedll.models`: static and dynamic-convolution U-Nets;
- :mod:`fedll.train`, :mod:`fedll.continual`, :mod:`fedll.faults`: a site's local training,
  its CL method, the faults a scenario injects;
- :mod:`fedll.evaluation`, :mod:`fedll.joint`, :mod:`fedll.results`, :mod:`fedll.columns`:
  the test-set evaluation, the joint bound, a trial's result rows and their columns;
- :mod:`fedll.metrics` and :mod:`fedll.report`: the measures of a Dice matrix, the tables and
  plots of a run;
- :mod:`fedll.inprocess` and :mod:`fedll.sweep`: a federation in one process, and every trial
  of a scenario on Ray;
- :mod:`fedll.deploy`: certificates, site data and the SuperNode command of real sites;
- :mod:`fedll.cli`: the ``fedll`` command.
"""

__version__ = "0.1.0"
