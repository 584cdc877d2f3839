"""Reading and laying out stage artifacts: `runs/<run_id>/<stage>/part-NNNNN.parquet` + manifest.

A stage folder holds its main table as shards, optional named side tables (for example
embeddings) in sub-folders with the same shard numbering, `rejects.parquet` and
`_manifest.json`. The manifest is written last, so its presence means the artifact is complete.
It records every file the stage wrote (size, rows, checksum; core/integrity.py), and every read
through `StageArtifact` checks the file against that record first: a truncated, rewritten or
deleted shard of a finished stage raises `IntegrityError` naming the file, it is never read or
taken for an empty shard. A stage still being written is checked against its shard markers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from affectflow.core.errors import UserError
from affectflow.core.integrity import (
    FileRecord,
    IntegrityError,
    damaged_files,
    describe_file,
    file_problem,
    relative_files,
)

SAMPLE_ID = "sample_id"
"""The key of every row of every stage: a stable 128-bit id of (dataset, source id)."""
SOURCE_ID = "source_id"
"""The sample's id in its source dataset (post id, `class/file`), kept in rejects for people."""

MANIFEST = "_manifest.json"
REJECTS = "rejects.parquet"
MAIN_TABLE = "main"
SHARD_WORK_DIR = "_shards"
PLAN_DIR = "_plan"
SHARD_GLOB = "part-*.parquet"

REJECTS_SCHEMA = pa.schema([
    (SAMPLE_ID, pa.string()),
    (SOURCE_ID, pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
])


def shard_name(shard_id: int) -> str:
    return f"part-{shard_id:05d}.parquet"


def shard_id_of(path: Path | str) -> int:
    return int(Path(path).stem.split("-")[1])


def marker_name(shard_id: int) -> str:
    """A shard's done marker, under `_shards/`: its fingerprint, counts and file records."""
    return f"{shard_id:05d}.json"


def shard_rejects_name(shard_id: int) -> str:
    return f"rejects-{shard_id:05d}.parquet"


def stage_file_records(folder: Path, known: dict[str, FileRecord] | None = None
                       ) -> dict[str, FileRecord]:
    """Records of every file a stage folder holds for its readers: all but its private `_plan/`,
    its shard markers and the manifest. Records in `known` (from the markers) are reused."""
    known = known or {}
    return {relative: known.get(relative) or describe_file(folder / relative)
            for relative in relative_files(folder, skip=(f"{PLAN_DIR}/", MANIFEST))
            if not (relative.startswith(f"{SHARD_WORK_DIR}/") and relative.endswith(".json"))}


_JSON_CACHE: dict[Path, tuple[tuple[int, int, int], Any]] = {}
_JSON_LOCK = threading.Lock()


def read_json(path: Path) -> Any:
    """A JSON file, parsed once per process while its size, mtime and inode stay the same
    (manifests are read for every shard a stage reads)."""
    stat = path.stat()
    key = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    with _JSON_LOCK:
        cached = _JSON_CACHE.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
    value = json.loads(path.read_text())
    with _JSON_LOCK:
        _JSON_CACHE[path] = (key, value)
    return value


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
        return dict(read_json(file))

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def digest(self) -> str:
        """Hash of the checksums of every file the finished stage wrote: what its readers read."""
        return str(self.manifest["digest"])

    def records(self) -> dict[str, FileRecord] | None:
        """`relative path -> record` of the files written: the manifest's when finished, the
        shard markers' while in progress, None for a folder no stage wrote."""
        if self.complete:
            manifest = self.manifest
            if "files" not in manifest:
                raise IntegrityError(self.path / MANIFEST, "written by an older affectflow "
                                     "without file records", hint=self.repair_hint())
            return dict(manifest["files"])
        markers = sorted((self.path / SHARD_WORK_DIR).glob("*.json"))
        if not markers:
            return None
        records: dict[str, FileRecord] = {}
        for marker in markers:
            records.update(read_json(marker).get("files", {}))
        return records

    def repair_hint(self) -> str:
        run_id = self.path.parent.name
        return (f"rerun the stage to recompute what is damaged: affectflow stage {self.name} "
                f"--run {run_id} (only the damaged shards are computed again)")

    def check_intact(self, hint: str | None = None) -> None:
        """Raise `IntegrityError` naming the first file that differs from its record."""
        damaged = damaged_files(self.path, self.records() or {})
        if damaged:
            relative, problem = next(iter(damaged.items()))
            more = f" (and {len(damaged) - 1} more file(s))" if len(damaged) > 1 else ""
            raise IntegrityError(self.path / relative, problem + more,
                                 hint=hint or self.repair_hint())

    def checked(self, path: Path, records: dict[str, FileRecord] | None = None) -> Path:
        """`path` (a file of this stage) once it matches the record of what the stage wrote.

        Raises `IntegrityError` when a recorded file is missing or differs, or when a finished
        stage holds a table file it never wrote; a file the stage did not write and that does not
        exist is returned as is, so callers can treat the shard as absent."""
        records = self.records() if records is None else records
        if records is None:
            return path
        relative = path.relative_to(self.path).as_posix()
        record = records.get(relative)
        if record is None:
            if self.complete and path.exists():
                raise IntegrityError(path, "not written by the stage (no record in its manifest)",
                                     hint=f"remove the file, or {self.repair_hint()}")
            return path
        problem = file_problem(path, record)
        if problem is not None:
            raise IntegrityError(path, problem, hint=self.repair_hint())
        return path

    def table_dir(self, table: str = MAIN_TABLE) -> Path:
        return self.path if table == MAIN_TABLE else self.path / table

    def shard_paths(self, table: str = MAIN_TABLE) -> list[Path]:
        """The table's shard files, each checked against its record."""
        records = self.records()
        folder = self.table_dir(table)
        if records is None:
            return sorted(folder.glob(SHARD_GLOB))
        paths = [self.path / relative for relative in records]
        return [self.checked(path, records) for path in sorted(paths)
                if path.parent == folder and path.match(SHARD_GLOB)]

    def shard_ids(self, table: str = MAIN_TABLE) -> list[int]:
        return [shard_id_of(path) for path in self.shard_paths(table)]

    def shard_path(self, shard_id: int, table: str = MAIN_TABLE) -> Path:
        """Where the shard is, checked against its record (see `checked`) so it can be read."""
        return self.checked(self.table_dir(table) / shard_name(shard_id))

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
        file = self.checked(self.path / REJECTS)
        return pq.read_table(file) if file.is_file() else empty_rejects()
