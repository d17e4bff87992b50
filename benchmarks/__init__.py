"""Benchmarks of the project: search efficiency, training throughput, per-evaluation overhead (docs/benchmarks.md)."""
