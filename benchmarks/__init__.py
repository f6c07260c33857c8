"""Benchmarks: each reports figures (wall time, peak memory, rates); none asserts on time."""
