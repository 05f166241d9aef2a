"""Benchmarks: each runs activebeam and its baseline side by side in one run and prints ratios.

Every benchmark is ``python -m benchmarks.<name>`` (and ``bazel run //benchmarks:<name>``); its
last stdout line is one JSON object with the figures.
"""
