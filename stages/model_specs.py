"""Fingerprints of model specs: a local model folder or checkpoint changes when its files do."""

from __future__ import annotations

from pathlib import Path

from affectflow.core.hashing import hash_value, tree_fingerprint


def local_path_in(spec: str) -> Path | None:
    """The local file/folder a spec points at (`/dir`, `local-dir:/dir`, `arch:/ckpt.pt`), if any."""
    for candidate in (spec, spec.split(":", 1)[-1]):
        path = Path(candidate)
        if candidate and path.exists():
            return path
    return None


def model_fingerprint(*specs: str) -> str:
    """Hash of the specs plus the files behind any local ones (hub names are their own version)."""
    parts = []
    for spec in specs:
        local = local_path_in(spec)
        parts.append([spec, tree_fingerprint(local) if local else None])
    return hash_value(parts)
