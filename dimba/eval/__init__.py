"""Evaluation: metrics, generation quality, speed benchmarks and plots."""
