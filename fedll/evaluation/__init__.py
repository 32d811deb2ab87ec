"""Evaluation: the models scored on the test cases after every round, and the measures.

- :mod:`~fedll.evaluation.evaluate`: Dice, HD95, surface Dice and attention per test case;
- :mod:`~fedll.evaluation.metrics`: the per-case metrics and the lifelong-learning measures of
  a metric matrix, as pure functions.
"""
