"""Benchmark harness for turbo_tasks: ``make bench`` (see docs/topics/performance.md)."""
