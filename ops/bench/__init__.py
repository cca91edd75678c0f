"""Benchmarks run by ``trade-engine bench ...``: each prints figures, and with --json a last JSON line."""
