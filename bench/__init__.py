"""Benchmarks: they print tables; no timing is asserted in the tests."""
