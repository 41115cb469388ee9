"""Benchmark runner for the event bus: ``python -m bench`` (see docs/benchmarks.md)."""
