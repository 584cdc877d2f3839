"""`affectflow export RUN partition [--partition NAME] --out FILE.parquet|csv`.

Rows of one or all partitions joined with the post's source id, label, text and image path and,
when the run has a knowledge stage, the knowledge-based zero-shot label and its probability, for
tools outside affectflow. Streams shard by shard into one writer, so memory stays flat, and writes
atomically (a half-written export never appears under the requested name). Post text is
untrusted: in CSV, a cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab or
carriage return first) is written with a leading `'`, as OWASP recommends.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from affectflow.core.atomic import atomic_path
from affectflow.core.columns import read_columns
from affectflow.core.errors import UserError
from affectflow.core.runs import RunStore
from affectflow.core.store import SAMPLE_ID, SOURCE_ID
from affectflow.stages.ingest.stage import IMAGE_PATH, LABEL, SPLIT, TEXT
from affectflow.stages.ingest.stage import SCHEMA as INGEST_SCHEMA
from affectflow.stages.knowledge.knowledge import KNOWLEDGE_LABEL, KNOWLEDGE_LABEL_PROBABILITY
from affectflow.stages.knowledge.knowledge import SCHEMA as KNOWLEDGE_SCHEMA
from affectflow.stages.partition.stage import PARTITION, PARTITIONS, SCHEMA

JOINED_COLUMNS = {
    "ingest": [INGEST_SCHEMA.field(name) for name in (SOURCE_ID, LABEL, SPLIT, TEXT, IMAGE_PATH)],
    "knowledge": [KNOWLEDGE_SCHEMA.field(name)
                  for name in (KNOWLEDGE_LABEL, KNOWLEDGE_LABEL_PROBABILITY)],
}
"""Columns of other stages added to each exported row by sample_id (null where absent)."""
EXPORT_SCHEMA = pa.schema([*SCHEMA, *(field for fields in JOINED_COLUMNS.values() for field in fields)])
FORMATS = (".parquet", ".csv")
FORMULA_START = r"^[=+\-@\t\r]"


def neutralise_formulas(rows: pa.Table) -> pa.Table:
    """String cells that a spreadsheet would evaluate, prefixed with `'` (for CSV output)."""
    for index, field in enumerate(rows.schema):
        if pa.types.is_string(field.type):
            column = rows.column(index)
            risky = pc.fill_null(pc.match_substring_regex(column, FORMULA_START), False)
            safe = pc.if_else(risky, pc.binary_join_element_wise("'", column, ""), column)
            rows = rows.set_column(index, field, safe)
    return rows


def _joined(rows: pa.Table, other: pa.Table | None, fields: list[pa.Field]) -> pa.Table:
    """Add `fields` of `other` by sample_id (nulls when it lacks a sample or the column)."""
    position = (pc.index_in(rows[SAMPLE_ID], value_set=other[SAMPLE_ID].combine_chunks())
                if other is not None else None)
    for name, dtype in ((field.name, field.type) for field in fields):
        if other is not None and name in other.column_names:
            column = other[name].combine_chunks().take(position).cast(dtype)
        else:
            column = pa.nulls(rows.num_rows, dtype)
        rows = rows.append_column(name, column)
    return rows


def _shard_columns(run: RunStore, stage: str, shard_id: int, fields: list[pa.Field]) -> pa.Table | None:
    """The wanted columns of one shard of a finished stage; None when it has no such shard."""
    artifact = run.stage(stage)
    path = artifact.shard_path(shard_id)
    if not artifact.complete or not path.is_file():
        return None
    names = pq.read_schema(path).names
    return read_columns(path, [SAMPLE_ID, *(field.name for field in fields if field.name in names)])


def export_partition(run: RunStore, out: Path, partition: str | None = None) -> int:
    """Write the rows of `partition` (all partitions when None) to `out`; returns rows written."""
    if partition is not None and partition not in PARTITIONS:
        raise UserError(f"unknown partition {partition!r}",
                        hint=f"choose one of {', '.join(PARTITIONS)}, or omit --partition")
    if out.suffix.lower() not in FORMATS:
        raise UserError(f"cannot export to {out.name}: unknown format",
                        hint="name the output file *.parquet or *.csv")
    artifact = run.stage("partition")
    shard_ids = artifact.manifest["shard_ids"]
    written = 0
    csv = out.suffix.lower() == ".csv"
    with atomic_path(out) as tmp:
        writer: pq.ParquetWriter | pacsv.CSVWriter = (
            pacsv.CSVWriter(tmp, EXPORT_SCHEMA) if csv
            else pq.ParquetWriter(tmp, EXPORT_SCHEMA, compression="zstd"))
        with writer:
            for shard_id in shard_ids:
                rows = read_columns(artifact.shard_path(shard_id), SCHEMA.names)
                if partition is not None:
                    rows = rows.filter(pc.equal(rows[PARTITION], partition))
                if rows.num_rows == 0:
                    continue
                for stage, fields in JOINED_COLUMNS.items():
                    rows = _joined(rows, _shard_columns(run, stage, shard_id, fields), fields)
                rows = rows.cast(EXPORT_SCHEMA)
                writer.write_table(neutralise_formulas(rows) if csv else rows)
                written += rows.num_rows
    return written
