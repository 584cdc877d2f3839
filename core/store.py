"""Reading and laying out stage artifacts: `runs/<run_id>/<stage>/part-NNNNN.parquet` + manifest.

A stage folder holds its main table as shards, optional named side tables (for example
embeddings) in sub-folders with the same shard numbering, `rejects.parquet` and
`_manifest.json`. The manifest is written last, so its presence means the artifact is complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from affectflow.core.errors import UserError

SAMPLE_ID = "sample_id"
"""The key of every row of every stage: a stable 128-bit id of (dataset, source id)."""
SOURCE_ID = "source_id"
"""The sample's id in its source dataset (post id, `class/file`), kept in rejects for people."""

MANIFEST = "_manifest.json"
REJECTS = "rejects.parquet"
MAIN_TABLE = "main"
SHARD_WORK_DIR = "_shards"
PLAN_DIR = "_plan"

REJECTS_SCHEMA = pa.schema([
    (SAMPLE_ID, pa.string()),
    (SOURCE_ID, pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
])


def shard_name(shard_id: int) -> str:
    return f"part-{shard_id:05d}.parquet"


def shard_id_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


def empty_rejects() -> pa.Table:
    return REJECTS_SCHEMA.empty_table()


def make_rejects(rows: list[dict[str, Any]]) -> pa.Table:
    """Rejects table from dicts with sample_id/source_id/reason/detail (missing keys -> null)."""
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in REJECTS_SCHEMA.names} for row in rows],
        schema=REJECTS_SCHEMA,
    )


@dataclass(frozen=True)
class StageArtifact:
    """Read access to one finished (or in-progress) stage folder."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def complete(self) -> bool:
        return (self.path / MANIFEST).is_file()

    @property
    def manifest(self) -> dict[str, Any]:
        file = self.path / MANIFEST
        if not file.is_file():
            raise UserError(f"stage '{self.name}' has no finished artifact at {self.path}",
                            hint=f"run the stage first: affectflow stage {self.name} --run <ID>")
        return json.loads(file.read_text())

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    def table_dir(self, table: str = MAIN_TABLE) -> Path:
        return self.path if table == MAIN_TABLE else self.path / table

    def shard_paths(self, table: str = MAIN_TABLE) -> list[Path]:
        return sorted(self.table_dir(table).glob("part-*.parquet"))

    def shard_ids(self, table: str = MAIN_TABLE) -> list[int]:
        return [shard_id_of(path) for path in self.shard_paths(table)]

    def shard_path(self, shard_id: int, table: str = MAIN_TABLE) -> Path:
        return self.table_dir(table) / shard_name(shard_id)

    def read_shard(self, shard_id: int, columns: list[str] | None = None,
                   table: str = MAIN_TABLE) -> pa.Table:
        return pq.read_table(self.shard_path(shard_id, table), columns=columns)

    def iter_shards(self, columns: list[str] | None = None,
                    table: str = MAIN_TABLE) -> Iterator[tuple[int, pa.Table]]:
        for path in self.shard_paths(table):
            yield shard_id_of(path), pq.read_table(path, columns=columns)

    def read_all(self, columns: list[str] | None = None, table: str = MAIN_TABLE) -> pa.Table:
        paths = self.shard_paths(table)
        if not paths:
            raise UserError(f"stage '{self.name}' has no '{table}' shards at {self.path}")
        tables = [pq.read_table(path, columns=columns) for path in paths]
        return pa.concat_tables(tables)

    def schema(self, table: str = MAIN_TABLE) -> pa.Schema:
        paths = self.shard_paths(table)
        return pq.read_schema(paths[0]) if paths else pa.schema([])

    def num_rows(self, table: str = MAIN_TABLE) -> int:
        return sum(pq.read_metadata(path).num_rows for path in self.shard_paths(table))

    def rejects(self) -> pa.Table:
        file = self.path / REJECTS
        return pq.read_table(file) if file.is_file() else empty_rejects()
