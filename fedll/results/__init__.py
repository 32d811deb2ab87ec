"""Results: a trial's result rows and the columns of the result files (torch-free).

- :mod:`~fedll.results.rows`: per-case metrics, attention and routing after every round;
- :mod:`~fedll.results.columns`: the columns of ``results.csv``, ``attention.csv`` and
  ``routing.csv``, defined once.
"""
