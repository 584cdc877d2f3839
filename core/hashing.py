"""Stable content hashes: fingerprints must not change between processes or Python versions."""

from __future__ import annotations

import hashlib
import json
import os
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


def tree_fingerprint(root: Path) -> str:
    """Hash of every file's relative path, size and mtime below `root` (or of the file itself).

    Cheap (stat only) and changes whenever a file is added, removed, rewritten or touched.
    """
    entries = []
    if root.is_file():
        paths = [root]
    else:
        paths = [Path(folder) / name for folder, _, names in os.walk(root) for name in names]
    for path in sorted(paths):
        stat = path.stat()
        entries.append((str(path.relative_to(root.parent)), stat.st_size, stat.st_mtime_ns))
    return hash_value(entries)
