"""Partition stage at 10x the rows: time ratio (target <= 12, i.e. close to linear) and peak
memory ratio (target <= 1.3, i.e. flat memory).

Each size gets synthetic factual/emotional score artifacts sharded like a real run, then the
stage runs in a fresh subprocess so each size's peak resident memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from affectflow.core.atomic import write_json, write_parquet
from affectflow.core.hashing import hash_value
from affectflow.core.integrity import records_digest
from affectflow.core.runner import StageJob, run_stage
from affectflow.core.runs import RunStore
from affectflow.core.store import MANIFEST, shard_name, stage_file_records
from affectflow.stages.partition.stage import PartitionParams, PartitionStage
from bench.common import BenchRow, peak_rss_mib

SHARD_ROWS = 1024
RUN_ID = "bench"


@dataclass(frozen=True)
class Settings:
    workers: int = 1


def write_scores(artifact_root: Path, rows: int, seed: int = 0) -> None:
    """factual + emotional artifacts of `rows` weakly correlated scores, SHARD_ROWS per shard."""
    run = RunStore(artifact_root, RUN_ID)
    run.create({}, {})
    rng = np.random.default_rng(seed)
    shard_ids = list(range((rows + SHARD_ROWS - 1) // SHARD_ROWS))
    for shard_id in shard_ids:
        start = shard_id * SHARD_ROWS
        count = min(SHARD_ROWS, rows - start)
        ids = pa.array([f"{index:032x}" for index in range(start, start + count)], pa.string())
        shared = rng.normal(size=count)
        scores = {"factual": 0.25 + 0.05 * (0.3 * shared + rng.normal(size=count)),
                  "emotional": 0.30 + 0.08 * (0.3 * shared + rng.normal(size=count))}
        for name, values in scores.items():
            table = pa.table({"sample_id": ids,
                              f"{name}_score": pa.array(values.astype(np.float32))})
            write_parquet(run.stage(name).table_dir() / shard_name(shard_id), table)
    for name in scores:
        files = stage_file_records(run.stage(name).path)
        write_json(run.stage(name).path / MANIFEST, {"files": files, "digest": records_digest(files),
            "stage": name, "fingerprint": hash_value([name, rows, seed]), "shard_ids": shard_ids,
            "rows_in": rows, "rows_out": rows, "rows_rejected": 0, "rejects_by_reason": {},
            # the runner checks the columns partition reads against the recorded schema
            "schema": [["sample_id", "string"], [f"{name}_score", "float"]]})


def partition_once(artifact_root: Path) -> dict[str, float]:
    """Run the stage once in this process; report its wall time and this process's peak RSS."""
    run = RunStore(artifact_root, RUN_ID)
    start = time.perf_counter()
    run_stage(StageJob(run, PartitionStage(), PartitionParams(), Settings()), force=True)
    return {"seconds": time.perf_counter() - start, "peak_mib": peak_rss_mib()}


def measure(rows: int, scratch: Path) -> dict[str, float]:
    root = scratch / f"rows-{rows}"
    write_scores(root, rows)
    worker = subprocess.run([sys.executable, "-m", "bench.partition_scale", "--worker", str(root)],
                            capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    return json.loads(worker.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[BenchRow]:
    small, large = (20_000, 200_000) if quick else (100_000, 1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        low, high = measure(small, Path(tmp)), measure(large, Path(tmp))
    shape = f"{SHARD_ROWS} rows/shard, quantile mode"
    return [
        BenchRow(f"partition time {large // 1000}k / {small // 1000}k rows",
                 high["seconds"] / low["seconds"], 12.0, higher_is_better=False,
                 detail=f"{low['seconds']:.2f}s vs {high['seconds']:.2f}s "
                        f"({large / high['seconds']:.0f} rows/s), {shape}",
                 extra={"small_seconds": low["seconds"], "large_seconds": high["seconds"]}),
        BenchRow(f"partition peak memory {large // 1000}k / {small // 1000}k rows",
                 high["peak_mib"] / low["peak_mib"], 1.3, higher_is_better=False,
                 detail=f"{low['peak_mib']:.0f} MiB vs {high['peak_mib']:.0f} MiB peak RSS, "
                        f"fresh process per size",
                 extra={"small_mib": low["peak_mib"], "large_mib": high["peak_mib"]}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="worker: run the partition stage once")
    parser.add_argument("--worker", required=True, type=Path, help="artifact root of a bench run")
    print(json.dumps(partition_once(parser.parse_args().worker)))


if __name__ == "__main__":
    main()
