"""Benchmarks, runnable as ``python -m bench.<name>``; not part of the unit tests."""
