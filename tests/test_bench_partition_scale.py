"""bench/partition_scale.py's synthetic factual / emotional artifacts are ones the runner accepts
(the benchmark writes them by hand, so a new manifest check must not break it unseen)."""

from __future__ import annotations

from pathlib import Path

from bench.partition_scale import partition_once, write_scores


def test_the_partition_benchmark_runs_the_stage_on_its_synthetic_scores(tmp_path: Path) -> None:
    write_scores(tmp_path, rows=3000)
    measured = partition_once(tmp_path)
    assert measured["seconds"] > 0 and measured["peak_mib"] > 0
