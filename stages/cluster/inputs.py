"""Line up one ingest shard with its image features, text features and partition rows.

Every ingest row is accounted for: kept when the teacher stage wrote its text feature, the
partition stage kept it, its image loaded and both vectors are usable; otherwise rejected with
the first reason that applies, upstream stages first. Joins are by sample_id, never position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from affectflow.core.columns import column_vectors
from affectflow.core.store import SAMPLE_ID, SOURCE_ID, StageArtifact
from affectflow.stages.cluster.features import FEATURE_COLUMN
from affectflow.stages.teacher import TEXT_FEATURE


@dataclass
class AlignedShard:
    """Kept samples (ingest order) with their vectors, and reject rows for the others."""

    rows_in: int
    sample_ids: list[str]
    source_ids: list[str]
    image: np.ndarray
    text: np.ndarray
    rejects: list[dict[str, Any]] = field(default_factory=list)


def read_if_present(artifact: StageArtifact, shard_id: int, columns: list[str],
                    table: str) -> pa.Table | None:
    """A shard of an upstream table, or None when that stage wrote no such shard."""
    path = artifact.shard_path(shard_id, table)
    return artifact.read_shard(shard_id, columns, table) if path.is_file() else None


def _positions(ids: pa.Array, table: pa.Table | None) -> np.ndarray:
    """Row of each id in `table` (-1 where absent)."""
    if table is None or table.num_rows == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    found = pc.index_in(ids, value_set=table[SAMPLE_ID].combine_chunks())
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _usable(vectors: np.ndarray) -> np.ndarray:
    """Rows that can be L2-normalised: finite and not (near) zero."""
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(vectors), vectors, 0.0), axis=1)
    return finite & (norms > 1e-6)


def _vectors(table: pa.Table | None, column: str, rows: np.ndarray, dim: int) -> np.ndarray:
    """float32 vectors of the given rows (all valid), (len(rows), dim)."""
    if table is None or len(rows) == 0:
        return np.zeros((len(rows), dim), dtype=np.float32)
    return column_vectors(table[column].combine_chunks().take(pa.array(rows)))


def align_shard(listing: pa.Table, image_part: pa.Table, text_features: pa.Table | None,
                partition_ids: pa.Table | None) -> AlignedShard:
    """Join one ingest shard (`listing`) with the inputs the cluster stage needs."""
    ids = listing[SAMPLE_ID].combine_chunks()
    sample_ids, source_ids = ids.to_pylist(), listing[SOURCE_ID].to_pylist()
    text_at = _positions(ids, text_features)
    in_partition = _positions(ids, partition_ids) >= 0
    image_at = _positions(ids, image_part)
    image_valid = pc.is_valid(image_part[FEATURE_COLUMN]).to_numpy(zero_copy_only=False)
    image_ok = (image_at >= 0) & image_valid[np.maximum(image_at, 0)]
    image_dim = image_part.schema.field(FEATURE_COLUMN).type.list_size
    text_dim = (text_features.schema.field(TEXT_FEATURE).type.list_size
                if text_features is not None else 0)

    candidates = np.flatnonzero((text_at >= 0) & in_partition & image_ok)
    image = _vectors(image_part, FEATURE_COLUMN, image_at[candidates], image_dim)
    text = _vectors(text_features, TEXT_FEATURE, text_at[candidates], text_dim)
    usable = _usable(image) & _usable(text)
    kept = candidates[usable]
    errors = image_part["error"].to_pylist()

    rejects = []
    degenerate = set(candidates[~usable].tolist())
    for index in range(len(sample_ids)):
        if text_at[index] < 0:
            reason, detail = "missing_text_feature", "rejected by the teacher stage"
        elif not in_partition[index]:
            reason, detail = "missing_partition", "rejected by the partition stage"
        elif not image_ok[index]:
            reason = "image_load_failed"
            detail = errors[image_at[index]] if image_at[index] >= 0 else "no image feature"
        elif index in degenerate:
            reason, detail = "degenerate_feature", "image or text feature is non-finite or zero"
        else:
            continue
        rejects.append({SAMPLE_ID: sample_ids[index], SOURCE_ID: source_ids[index],
                        "reason": reason, "detail": detail})
    return AlignedShard(rows_in=len(sample_ids), sample_ids=[sample_ids[i] for i in kept],
                        source_ids=[source_ids[i] for i in kept], image=image[usable],
                        text=text[usable], rejects=rejects)
