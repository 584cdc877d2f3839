"""What a stage wrote, recorded so that a damaged or missing file is found, never trusted.

Each file a stage writes is described by its size, its row count (from the Parquet footer, for
tables) and the SHA-256 of its bytes (about 1.7 GB/s here, so checking a stage's output costs a
fraction of reading it: `bench/shard_verify.py`). Shard done markers record their shard's files,
the manifest records every file of the finished stage, and readers and skip decisions check a file
against its record before they use it. A file is checked once per process while its size, mtime
and inode stay the same.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from affectflow.core.errors import UserError
from affectflow.core.hashing import hash_file, hash_value

FileRecord = dict[str, Any]
"""`{"bytes": int, "rows": int | None, "sha256": str}` of one file."""

_VERIFIED: set[tuple[str, int, int, int, str]] = set()
_VERIFIED_LOCK = threading.Lock()


class IntegrityError(UserError):
    """A recorded file of a finished stage is missing or differs from what the stage wrote."""

    def __init__(self, path: Path, problem: str, hint: str) -> None:
        super().__init__(f"{path}: {problem}", hint=hint)
        self.path = path
        self.problem = problem


def describe_file(path: Path) -> FileRecord:
    """The record of a file as it is now (tables get their footer's row count)."""
    rows = pq.read_metadata(path).num_rows if path.suffix == ".parquet" else None
    return {"bytes": path.stat().st_size, "rows": rows, "sha256": hash_file(path)}


def file_problem(path: Path, record: FileRecord) -> str | None:
    """Why `path` does not match `record` (None when it does); the checksum is read once per
    process for an unchanged file."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return "missing (the stage wrote it)"
    if not path.is_file():
        return "not a regular file"
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino, record["sha256"])
    with _VERIFIED_LOCK:
        if key in _VERIFIED:
            return None
    if stat.st_size != record["bytes"]:
        return f"{stat.st_size} bytes, the stage wrote {record['bytes']} (truncated or rewritten)"
    if record.get("rows") is not None:
        try:
            rows = pq.read_metadata(path).num_rows
        except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError)
            return f"not a readable Parquet file ({error})"
        if rows != record["rows"]:
            return f"{rows} rows, the stage wrote {record['rows']}"
    if hash_file(path) != record["sha256"]:
        return "contents differ from what the stage wrote (checksum mismatch)"
    with _VERIFIED_LOCK:
        _VERIFIED.add(key)
    return None


def damaged_files(folder: Path, records: dict[str, FileRecord]) -> dict[str, str]:
    """`relative path -> problem` for every recorded file under `folder` that does not match."""
    problems = {}
    for relative, record in sorted(records.items()):
        problem = file_problem(folder / relative, record)
        if problem is not None:
            problems[relative] = problem
    return problems


def forget_verified() -> None:
    """Check every file again on next use (tests that damage files in place, same size)."""
    with _VERIFIED_LOCK:
        _VERIFIED.clear()


def relative_files(folder: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Every regular file under `folder` as a POSIX path relative to it, except those under the
    `skip` prefixes; sorted, so records list in a stable order."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            relative = Path(parent, name).relative_to(folder).as_posix()
            if not relative.startswith(skip):
                found.append(relative)
    return sorted(found)


def records_digest(records: dict[str, FileRecord]) -> str:
    """One hash of a set of files' paths and checksums (a stage's `digest`)."""
    return hash_value(sorted((name, record["sha256"]) for name, record in records.items()))
