"""Tests of fedll.training (a package: its test_ditto and test_scaffold share their names with
the strategies' tests)."""
