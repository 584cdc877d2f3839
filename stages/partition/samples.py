"""Data access for partition views: the share table and a few samples per partition, with the
details other stages hold about them (post text, ANPs, caption, triplets, knowledge label,
cluster ids).

Samples are the ones with the smallest sample_ids in each partition. Sample ids are hashes, so
this is a uniform random sample that is the same every time, found in one streaming pass with
at most `limit` rows per partition kept in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from affectflow.core.columns import read_columns
from affectflow.core.runs import RunStore
from affectflow.core.store import SAMPLE_ID, SOURCE_ID, StageArtifact
from affectflow.stages.cluster.stage import label_columns_of
from affectflow.stages.emotional import ANP_SCORES, ANPS, EMOTIONAL_SCORE
from affectflow.stages.factual import FACTUAL_SCORE
from affectflow.stages.ingest.stage import IMAGE_PATH, LABEL, TEXT
from affectflow.stages.knowledge.caption import CAPTION
from affectflow.stages.knowledge.knowledge import KNOWLEDGE_LABEL, KNOWLEDGE_LABEL_PROBABILITY
from affectflow.stages.knowledge.triplets import KNOWLEDGE_TEXT, TRIPLETS
from affectflow.stages.partition.stage import EMOTIONAL_NORM, FACTUAL_NORM, PARTITION, PARTITIONS

# Optional upstream stages and the columns a view shows from each (when present).
DETAIL_COLUMNS = {
    "ingest": [SOURCE_ID, IMAGE_PATH, TEXT, LABEL],
    "emotional": [ANPS, ANP_SCORES],
    "caption": [CAPTION],
    "triplets": [TRIPLETS, KNOWLEDGE_TEXT],
    "knowledge": [KNOWLEDGE_LABEL, KNOWLEDGE_LABEL_PROBABILITY],
}
CLUSTER_STAGE = "cluster"
_SCORE_COLUMNS = [SAMPLE_ID, PARTITION, FACTUAL_SCORE, EMOTIONAL_SCORE, FACTUAL_NORM,
                  EMOTIONAL_NORM]


@dataclass
class ShareRow:
    """One line of the share table; `paper_share` is None where the paper reports no figure."""

    name: str
    count: int
    share: float
    paper_share: float | None


@dataclass
class PartitionSample:
    """One sample with everything the views show; missing stages leave fields empty."""

    sample_id: str
    partition: str
    factual_score: float
    emotional_score: float
    factual_norm: float
    emotional_norm: float
    source_id: str | None = None
    image_path: str | None = None
    text: str | None = None
    label: str | None = None
    anps: list[str] = field(default_factory=list)
    anp_scores: list[float] = field(default_factory=list)
    caption: str | None = None
    triplets: list[dict[str, str]] = field(default_factory=list)
    knowledge_text: str | None = None
    knowledge_label: str | None = None
    knowledge_label_probability: float | None = None
    clusters: dict[str, int] = field(default_factory=dict)


def partition_summary(run: RunStore) -> dict[str, Any]:
    """The summary `finalize` stored in the manifest (a clear error if the stage has not run)."""
    return dict(run.stage("partition").manifest["summary"])


def share_rows(summary: dict[str, Any]) -> list[ShareRow]:
    """Rows for the four partitions plus both partial kinds together, as the paper reports."""
    parts = summary["partitions"]
    paper = summary["paper"]
    rows = [ShareRow(name, parts[name]["count"], parts[name]["share"], paper.get(name))
            for name in PARTITIONS]
    partial = summary["partial"]
    rows.insert(3, ShareRow("partial (both kinds)", partial["count"], partial["share"],
                            paper["partial"]))
    return rows


def _smallest_ids(best: pa.Table | None, rows: pa.Table, limit: int) -> pa.Table:
    merged = rows if best is None else pa.concat_tables([best, rows])
    return merged.sort_by(SAMPLE_ID).slice(0, limit)


def select_samples(run: RunStore, limit: int) -> dict[str, list[PartitionSample]]:
    """Up to `limit` samples per partition (smallest sample_ids), with their details."""
    if limit <= 0:
        return {name: [] for name in PARTITIONS}
    partition = run.stage("partition")
    best: dict[str, pa.Table | None] = dict.fromkeys(PARTITIONS)
    for shard_id in partition.manifest["shard_ids"]:
        table = read_columns(partition.shard_path(shard_id), _SCORE_COLUMNS)
        table = table.append_column("shard_id", pa.array([shard_id] * table.num_rows, pa.int32()))
        for name in PARTITIONS:
            rows = table.filter(pc.equal(table[PARTITION], name))
            if rows.num_rows:
                best[name] = _smallest_ids(best[name], rows, limit)
    chosen = [table for table in best.values() if table is not None]
    if not chosen:
        return {name: [] for name in PARTITIONS}
    selected = pa.concat_tables(chosen)
    details = _details(run, selected)
    samples: dict[str, list[PartitionSample]] = {name: [] for name in PARTITIONS}
    for row in selected.drop_columns(["shard_id"]).to_pylist():
        samples[row[PARTITION]].append(PartitionSample(**row, **details.get(row[SAMPLE_ID], {})))
    return samples


def _details(run: RunStore, selected: pa.Table) -> dict[str, dict[str, Any]]:
    """sample_id -> fields from every finished optional stage, reading only the needed shards."""
    found: dict[str, dict[str, Any]] = {}
    for shard_id in sorted(set(selected["shard_id"].to_pylist())):
        ids = selected.filter(pc.equal(selected["shard_id"], shard_id))[SAMPLE_ID]
        for stage in (*DETAIL_COLUMNS, CLUSTER_STAGE):
            for row in _stage_rows(run.stage(stage), shard_id, ids.combine_chunks()):
                sample_id = row.pop(SAMPLE_ID)
                entry = found.setdefault(sample_id, {})
                if stage == CLUSTER_STAGE:
                    entry["clusters"] = {k: v for k, v in row.items() if v is not None}
                else:
                    entry.update({k: v for k, v in row.items() if v is not None})
    return found


def _wanted_columns(artifact: StageArtifact, schema: pa.Schema) -> list[str]:
    """The view's columns of a stage that this artifact has (cluster: one label column per side
    and K it was run with)."""
    if artifact.name == CLUSTER_STAGE:
        return label_columns_of(artifact)
    return [name for name in DETAIL_COLUMNS[artifact.name] if name in schema.names]


def _stage_rows(artifact: StageArtifact, shard_id: int, ids: pa.Array) -> list[dict[str, Any]]:
    """Rows of one shard of a finished stage for the given ids; [] when the stage is absent."""
    path = artifact.shard_path(shard_id)
    if not artifact.complete or not path.is_file():
        return []
    shard = pq.ParquetFile(path)
    wanted = _wanted_columns(artifact, shard.schema_arrow)
    table = shard.read(columns=[SAMPLE_ID, *wanted], use_threads=False)
    return table.filter(pc.is_in(table[SAMPLE_ID], value_set=ids)).to_pylist()
