"""The run: every trial of a scenario scheduled, executed and kept in its run directory.

- :mod:`~fedll.run.sweep`: the trials on Ray (this machine or a cluster) or in this process,
  each run by :mod:`~fedll.run.execute` on a backend (:mod:`~fedll.run.backends`), Ray sized by
  :mod:`~fedll.run.ray_cluster`;
- :mod:`~fedll.run.workload` and :mod:`~fedll.run.planning`: the longest trials first, and each
  round's sites, cases and seeds;
- :mod:`~fedll.run.trial_task`: what the sweep and the Flower apps pass each other for a trial;
- :mod:`~fedll.run.run_dir`, :mod:`~fedll.run.store`, :mod:`~fedll.run.collect`,
  :mod:`~fedll.run.checkpoint`, :mod:`~fedll.run.lock`: which scenario a run directory holds,
  its sealed trial files, the results collected from them, mid-trial checkpoints, one writer
  at a time;
- :mod:`~fedll.run.device` and :mod:`~fedll.run.provenance`: where and in what precision a trial
  computes, and with what a run was made.
"""
