"""Upstream artifacts for partition tests, written the way the runner writes them.

These helpers write the scoring stages' documented output tables (shard Parquet, then
`_manifest.json` last), so the partition stage and its views are tested without any model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from affectflow.core.atomic import write_json, write_parquet
from affectflow.core.hashing import hash_value
from affectflow.core.integrity import records_digest
from affectflow.core.runner import StageJob, run_stage
from affectflow.core.runs import RunStore
from affectflow.core.store import MANIFEST, StageArtifact, shard_name, stage_file_records
from affectflow.stages.partition.stage import PartitionParams, PartitionStage


@dataclass(frozen=True)
class Settings:
    workers: int = 1


def write_artifact(run: RunStore, name: str, shards: dict[int, pa.Table],
                   params: dict[str, Any] | None = None) -> StageArtifact:
    """A finished stage folder holding the given shards (and the params it ran with), with a
    content fingerprint."""
    artifact = run.stage(name)
    for shard_id, table in shards.items():
        write_parquet(artifact.table_dir() / shard_name(shard_id), table)
    rows = sum(table.num_rows for table in shards.values())
    fingerprint = hash_value([name, {sid: t.to_pydict() for sid, t in shards.items()}])
    schema = next(iter(shards.values())).schema
    files = stage_file_records(artifact.path)
    write_json(artifact.path / MANIFEST, {"files": files, "digest": records_digest(files),
        "stage": name, "fingerprint": fingerprint, "shard_ids": sorted(shards),
        "params": params or {},
        "schema": [[field.name, str(field.type)] for field in schema],
        "rows_in": rows, "rows_out": rows, "rows_rejected": 0, "rejects_by_reason": {},
        "summary": {}})
    return artifact


def sample_ids(count: int) -> list[str]:
    return [f"s{index:06d}" for index in range(count)]


def shard(values: Sequence[Any] | np.ndarray, size: int) -> dict[int, list[Any]]:
    return {i: list(values[start:start + size])
            for i, start in enumerate(range(0, len(values), size))}


def write_scores(run: RunStore, ids: Sequence[str], factual: Sequence[float] | np.ndarray,
                 emotional: Sequence[float] | np.ndarray, shard_size: int) -> None:
    """`factual` and `emotional` artifacts with the same ids, split into shards of `shard_size`."""
    id_shards = shard(ids, shard_size)
    for name, values in (("factual", factual), ("emotional", emotional)):
        value_shards = shard(np.asarray(values, dtype=np.float32), shard_size)
        write_artifact(run, name, {
            sid: pa.table({"sample_id": pa.array(id_shards[sid], pa.string()),
                           f"{name}_score": pa.array(value_shards[sid], pa.float32())})
            for sid in id_shards})


def new_run(root: Any, run_id: str = "run") -> RunStore:
    run = RunStore(root, run_id)
    run.create({}, {})
    return run


def run_partition(run: RunStore, **params: Any) -> dict[str, Any]:
    return run_stage(StageJob(run, PartitionStage(), PartitionParams(**params), Settings()))
