"""`affectflow export RUN partition [--partition NAME] --out FILE.parquet|csv`.

Rows of one or all partitions joined with the post's source id, label, text and image path,
for tools outside affectflow. Streams shard by shard into one writer, so memory stays flat,
and writes atomically (a half-written export never appears under the requested name). Post text
is untrusted: in CSV, a cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab or
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
from affectflow.stages.partition.stage import PARTITION, PARTITIONS, SCHEMA

INGEST_COLUMNS = [INGEST_SCHEMA.field(name) for name in (SOURCE_ID, LABEL, SPLIT, TEXT, IMAGE_PATH)]
EXPORT_SCHEMA = pa.schema([*SCHEMA, *INGEST_COLUMNS])
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


def _with_post_fields(rows: pa.Table, ingest: pa.Table | None) -> pa.Table:
    """Add ingest's columns by sample_id (nulls when the ingest shard lacks a sample)."""
    position = (pc.index_in(rows[SAMPLE_ID], value_set=ingest[SAMPLE_ID].combine_chunks())
                if ingest is not None else None)
    for name, dtype in ((field.name, field.type) for field in INGEST_COLUMNS):
        if ingest is not None and name in ingest.column_names:
            column = ingest[name].combine_chunks().take(position).cast(dtype)
        else:
            column = pa.nulls(rows.num_rows, dtype)
        rows = rows.append_column(name, column)
    return rows


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
    ingest = run.stage("ingest")
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
                post_file = ingest.shard_path(shard_id)
                present = ingest.complete and post_file.is_file()
                names = pq.read_schema(post_file).names if present else []
                wanted = [SAMPLE_ID, *(f.name for f in INGEST_COLUMNS if f.name in names)]
                posts = read_columns(post_file, wanted) if present else None
                rows = _with_post_fields(rows, posts).cast(EXPORT_SCHEMA)
                writer.write_table(neutralise_formulas(rows) if csv else rows)
                written += rows.num_rows
    return written
