"""Checking a stage's files against their records vs reading them (target <= 0.5).

Readers and skip decisions check every file of a finished stage (size, Parquet footer rows,
SHA-256) before trusting it, once per process. This compares that check with what a reader pays
anyway: reading the same shards into Arrow tables. Both sides read from the page cache (each is
run once first), so the ratio is the check's CPU cost against the read's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from affectflow.core.atomic import write_parquet
from affectflow.core.integrity import damaged_files, describe_file, forget_verified
from bench.common import BenchRow, timed


def _shards(folder: Path, shards: int, rows: int, width: int) -> dict[str, dict]:
    """Embedding-like shards (float16 vectors + ids), as the scoring stages write them."""
    rng = np.random.default_rng(0)
    records = {}
    for shard_id in range(shards):
        vectors = rng.normal(size=(rows, width)).astype(np.float16)
        table = pa.table({
            "sample_id": pa.array([f"{shard_id:05d}-{i:027d}" for i in range(rows)]),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), width)})
        path = folder / f"part-{shard_id:05d}.parquet"
        write_parquet(path, table)
        records[path.name] = describe_file(path)
    return records


def run(quick: bool) -> list[BenchRow]:
    shards, rows, width = (8, 1024, 512) if quick else (32, 2048, 512)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        records = _shards(folder, shards, rows, width)
        megabytes = sum(record["bytes"] for record in records.values()) / 1e6

        def check() -> dict[str, str]:
            forget_verified()
            return damaged_files(folder, records)

        def read() -> int:
            return sum(pq.read_table(folder / name).num_rows for name in records)

        check(), read()  # warm the page cache for both sides
        problems, check_seconds = timed(check, repeats=3)
        _, read_seconds = timed(read, repeats=3)
    if problems:
        raise RuntimeError(f"intact files reported damaged: {problems}")
    return [BenchRow("shard check / shard read (same files)", check_seconds / read_seconds, 0.5,
                     higher_is_better=False,
                     detail=f"{shards} shards, {megabytes:.0f} MB: check {check_seconds:.3f}s "
                            f"({megabytes / check_seconds:.0f} MB/s), read {read_seconds:.3f}s")]
