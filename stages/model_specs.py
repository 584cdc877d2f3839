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
        local = local_path_in(resolve_text_encoder(spec))
        parts.append([spec, tree_fingerprint(local) if local else None])
    return hash_value(parts)


PACKAGED_PREFIX = "packaged:"
PACKAGED_TEXT_ENCODERS = ("all-MiniLM-L6-v2",)
HUB_PREFIXES = ("hf-hub:", "timm:", "open_clip:")


def resolve_text_encoder(spec: str) -> str:
    """`packaged:all-MiniLM-L6-v2` -> the model folder a pip package ships; others unchanged."""
    if not spec.startswith(PACKAGED_PREFIX):
        return spec
    name = spec[len(PACKAGED_PREFIX):]
    if name not in PACKAGED_TEXT_ENCODERS:
        raise ValueError(f"unknown packaged text encoder {name!r}; known: {PACKAGED_TEXT_ENCODERS}")
    from affectflow.models.text_encoder import packaged_minilm_path

    return packaged_minilm_path()


def check_model_spec(spec: str) -> str:
    """Config-time check: a spec that names a local path must exist (hub names pass through)."""
    if spec.startswith(PACKAGED_PREFIX):
        resolve_text_encoder(spec)
        return spec
    candidate = spec.split(":", 1)[-1] if ":" in spec and not spec.startswith(HUB_PREFIXES) else spec
    looks_local = candidate.startswith((".", "/", "~")) or candidate.count("/") > 1 \
        or candidate.endswith((".pt", ".pth", ".bin", ".safetensors"))
    if looks_local and not Path(candidate).expanduser().exists():
        raise ValueError(f"model path does not exist: {candidate} (build the demo models with "
                         f"`affectflow demo-models DIR`, or name a hub model instead)")
    return spec
