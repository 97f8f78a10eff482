"""Benchmarks that sit on top of the installable packages; run each with `python -m benchmarks.NAME`."""
