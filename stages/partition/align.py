"""Line up one shard of factual and emotional scores by sample_id and find rows to reject.

Upstream stages keep ingest's shard numbering but may each reject different samples, so the two
score tables of a shard are joined by key, never by position. Every sample seen on either side
is accounted for: kept when both scores are finite, otherwise rejected with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from affectflow.core.columns import read_columns
from affectflow.core.store import SAMPLE_ID, StageArtifact, make_rejects
from affectflow.stages.emotional import EMOTIONAL_SCORE
from affectflow.stages.factual import FACTUAL_SCORE


def read_scores(artifact: StageArtifact, shard_id: int, column: str) -> pa.Table:
    """Only the key and the score `column` of one shard (empty when the shard has no file)."""
    path = artifact.shard_path(shard_id)
    if not path.is_file():
        return pa.schema([(SAMPLE_ID, pa.string()), (column, pa.float32())]).empty_table()
    return read_columns(path, [SAMPLE_ID, column])


def _unique_ids(table: pa.Table, stage: str) -> pa.Array:
    ids = table[SAMPLE_ID].combine_chunks().cast(pa.string())
    if pc.count_distinct(ids).as_py() != len(ids):
        raise RuntimeError(f"stage '{stage}' has duplicate sample_ids within one shard; "
                           f"its output breaks the one-row-per-sample contract")
    return ids


def _finite(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """float32 values (nulls as NaN) and a mask of the finite ones."""
    values = np.asarray(pc.fill_null(column, float("nan")).to_numpy(), dtype=np.float32)
    return values, np.isfinite(values)


@dataclass
class AlignedShard:
    """Factual rows in their upstream order, then emotional-only rows; `reasons` is "" for
    rows that are kept."""

    sample_ids: pa.Array
    factual: np.ndarray
    emotional: np.ndarray
    reasons: np.ndarray
    details: np.ndarray

    @property
    def rows_in(self) -> int:
        return len(self.sample_ids)

    @property
    def kept(self) -> np.ndarray:
        return self.reasons == ""

    def rejects(self) -> pa.Table:
        bad = np.flatnonzero(~self.kept)
        ids = self.sample_ids.take(pa.array(bad, pa.int64())).to_pylist()
        rows: list[dict[str, Any]] = [
            {SAMPLE_ID: sample_id, "reason": self.reasons[i], "detail": self.details[i]}
            for sample_id, i in zip(ids, bad)]
        return make_rejects(rows)


def align_scores(factual: pa.Table, emotional: pa.Table) -> AlignedShard:
    """Join one shard's score tables by sample_id; reasons follow a fixed priority: missing
    factual, missing emotional, then non-finite (NaN, infinite or null) scores."""
    factual_ids = _unique_ids(factual, "factual")
    emotional_ids = _unique_ids(emotional, "emotional")
    position = pc.index_in(factual_ids, value_set=emotional_ids)
    in_emotional = position.is_valid().to_numpy(zero_copy_only=False)
    emotional_for_factual = emotional[EMOTIONAL_SCORE].combine_chunks().take(position)
    only_emotional = pc.invert(pc.is_in(emotional_ids, value_set=factual_ids))
    extra = emotional.filter(only_emotional)

    sample_ids = pa.concat_arrays([factual_ids, emotional_ids.filter(only_emotional)])
    factual_scores, factual_ok = _finite(pa.concat_arrays([
        factual[FACTUAL_SCORE].combine_chunks().cast(pa.float32()),
        pa.nulls(extra.num_rows, pa.float32())]))
    emotional_scores, emotional_ok = _finite(pa.concat_arrays([
        emotional_for_factual.cast(pa.float32()),
        extra[EMOTIONAL_SCORE].combine_chunks().cast(pa.float32())]))
    has_factual = np.concatenate([np.ones(factual.num_rows, bool), np.zeros(extra.num_rows, bool)])
    has_emotional = np.concatenate([in_emotional, np.ones(extra.num_rows, bool)])

    reasons = np.full(len(sample_ids), "", dtype=object)
    details = np.full(len(sample_ids), "", dtype=object)
    checks = [
        (~has_factual, "missing_factual_score", "no factual score (rejected or not scored there)"),
        (~has_emotional, "missing_emotional_score",
         "no emotional score (rejected or not scored there)"),
        (~factual_ok, "nan_score", "factual_score is not a finite number"),
        (~emotional_ok, "nan_score", "emotional_score is not a finite number"),
    ]
    for failed, reason, detail in checks:
        new = failed & (reasons == "")
        reasons[new] = reason
        details[new] = detail
    return AlignedShard(sample_ids, factual_scores, emotional_scores, reasons, details)
