"""Benchmarks of what users feel. Run from the repository root: ``python -m bench.<name>``."""
