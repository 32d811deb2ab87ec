"""fedll: federated lifelong learning for glioma segmentation (static vs Dy-CNN U-Nets).

The library is plain numpy/torch; Flower's types stay in the apps beside it (``sites/``: the
one ClientApp; ``strategies/``: the ServerApp and the strategies), and Ray's in
:mod:`fedll.run.sweep`.

The packages, in the order of the pipeline:

- :mod:`fedll.config`: the scenario (schema, rules, grid, loading, the site instruction);
- :mod:`fedll.data`: cohorts (synthetic, BraTS / MSD / manifest), slices, the run's split;
- :mod:`fedll.run`: the sweep of a scenario's trials on Ray or in this process, their work and
  planning, the run directory's files, checkpoints, lock, device and provenance;
- :mod:`fedll.federation`: a federation in one process, the arrival stream, the messages and a
  site's kept state, injected faults, the joint bound;
- :mod:`fedll.training` and :mod:`fedll.models`: a site's local training with its CL method
  (and SCAFFOLD's and Ditto's site side), on static and dynamic-convolution U-Nets;
- :mod:`fedll.evaluation`: the test-set evaluation and the measures of a Dice matrix;
- :mod:`fedll.results`: a trial's result rows and their columns;
- :mod:`fedll.report` and :mod:`fedll.tracking`: the tables and plots of a run, and its
  TensorBoard / MLflow series;
- :mod:`fedll.deploy`: certificates, site data and the SuperNode command of real sites;
- :mod:`fedll.cli`, :mod:`fedll.segment`: the ``fedll`` command, and masks from a kept model;
  :mod:`fedll.errors`, :mod:`fedll.names`, :mod:`fedll.atomic`: what every stage shares.
"""

__version__ = "0.1.0"
