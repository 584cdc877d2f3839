"""Stable content hashes: fingerprints must not change between processes or Python versions."""

from __future__ import annotations

import hashlib
import json
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
