"""Benchmarks: each ``bench_*.py`` module measures one thing against a baseline taken in the
same run (these machines are shared and noisy) and writes ``bench/results/<name>.json``."""
