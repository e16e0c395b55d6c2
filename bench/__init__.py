"""Benchmarks: `make bench` (python -m bench). Each measures beside its baseline in the same
run and writes JSON to bench/results/."""
