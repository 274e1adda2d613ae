"""Benchmark suites of tools/bench_ops.py, one module per op; each defines ``run(args) -> list[Row]``."""
