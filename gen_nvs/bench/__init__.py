"""Benchmarks whose figures `gen-nvs bench` prints as JSON."""
