"""Tests of fedll.training (a package, as tests/strategies' and tests/sites' tests may share a
module's name with these)."""
