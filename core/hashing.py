"""Stable content hashes: fingerprints must not change between processes or Python versions."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values always hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def hash_value(value: Any) -> str:
    """SHA-256 hex digest of a JSON-serialisable value."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, streamed so large files do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stable_sample_id(*parts: str) -> str:
    """128-bit id from the sample's source identity (dataset name + source id), hex encoded."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def fingerprint_mode(settings: Any) -> str:
    """`run.fingerprint` of the run's settings: "stat" (default) or "content"."""
    return str(getattr(settings, "fingerprint", "stat"))


_BY_CONTENT: ContextVar[bool] = ContextVar("fingerprint_files_by_content", default=False)


@contextmanager
def external_files_fingerprinted(settings: Any) -> Iterator[None]:
    """Inside this block, file and tree fingerprints follow the run's `run.fingerprint` mode.

    The runner wraps every stage's `source_fingerprint` in it, so one setting covers each kind
    of external file a stage names (dataset trees, manifest-listed images, local model folders
    and checkpoints) without every stage and model helper passing the mode along."""
    token = _BY_CONTENT.set(fingerprint_mode(settings) == "content")
    try:
        yield
    finally:
        _BY_CONTENT.reset(token)


def _file_entry(name: str, path: str, size: int, mtime_ns: int, content: bool) -> tuple[Any, ...]:
    """What a fingerprint records of one file: its name and size, and its mtime or, in content
    mode, the hash of its bytes (so a copy with new mtimes fingerprints the same)."""
    return (name, size, hash_file(Path(path)) if content else mtime_ns)


def files_fingerprint(paths: list[str], base: Path, content: bool | None = None) -> str:
    """Hash of each listed file's path (relative to `base`), size and mtime or content (default:
    the mode of `external_files_fingerprinted`); a missing file counts as missing, so creating
    it later changes the fingerprint."""
    content = _BY_CONTENT.get() if content is None else content
    entries = []
    for path in paths:
        name = os.path.relpath(path, base)
        try:
            stat = os.stat(path)
        except OSError:
            entries.append((name, None, None))
            continue
        regular = os.path.isfile(path)
        entries.append(_file_entry(name, path, stat.st_size, stat.st_mtime_ns, content and regular))
    return hash_value(entries)


def tree_fingerprint(root: Path, content: bool | None = None) -> str:
    """Hash of every file's relative path, size and mtime (or content) below `root`, or of the
    file itself.

    Cheap in the default mode (one stat per file, read through `os.scandir`: a dataset of a
    million files must not take minutes to fingerprint) and changes whenever a file is added,
    removed, rewritten or touched. Content mode reads every byte instead of trusting mtimes.
    Symlinked folders are not followed; a dangling symlink counts as itself; only regular files
    are read. `content=None` follows `external_files_fingerprinted`.
    """
    content = _BY_CONTENT.get() if content is None else content
    if root.is_file():
        stat = root.stat()
        return hash_value([_file_entry(root.name, str(root), stat.st_size, stat.st_mtime_ns, content)])
    prefix = len(str(root.parent).rstrip(os.sep)) + 1
    entries, folders = [], [str(root)]
    while folders:
        with os.scandir(folders.pop()) as listing:
            for entry in listing:
                if entry.is_dir():
                    if not entry.is_symlink():
                        folders.append(entry.path)
                    continue
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    stat = entry.stat(follow_symlinks=False)
                entries.append(_file_entry(entry.path[prefix:], entry.path, stat.st_size,
                                           stat.st_mtime_ns, content and entry.is_file()))
    entries.sort()
    return hash_value(entries)
