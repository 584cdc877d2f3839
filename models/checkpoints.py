"""Torch files of the project: written atomically, read as data only, with the RNG states a
resumed training needs to continue exactly where it stopped.

Checkpoints and exported models hold only tensors and plain Python values, so
`torch.load(..., weights_only=True)` reads them and a tampered file cannot run code. Writes go
to a temporary sibling and are renamed into place, so a crash never leaves a torn file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from affectflow.core.atomic import atomic_path


def save_torch(path: Path, payload: Any) -> None:
    """torch.save through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_torch(path: Path) -> Any:
    """torch.load with weights_only=True onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def capture_rng() -> dict[str, Any]:
    """Every torch RNG state of this process (CPU, and each visible GPU)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
