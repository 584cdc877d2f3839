"""Benchmarks: each module exposes ``run(quick: bool) -> list[BenchRow]``; ``python -m bench`` runs all."""
