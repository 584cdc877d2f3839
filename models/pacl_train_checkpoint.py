"""Training checkpoints (resume) and exported PACL models, all loadable with weights_only=True.

Checkpoints hold only tensors and plain Python values (dicts, lists, str, int, float), so
`torch.load(..., weights_only=True)` reads them and a tampered file cannot run code. Writes go
to a temporary sibling and are renamed into place, so a crash never leaves a torn checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from affectflow.core.atomic import atomic_path

from .pacl import PaclModel, build_pacl_model

CHECKPOINT_FILE = "last.pt"
INITIAL_FILE = "initial.pt"
FINAL_FILE = "final.pt"


def save_torch(path: Path, payload: dict[str, Any]) -> None:
    """torch.save through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_torch(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def capture_rng() -> dict[str, Any]:
    """Every torch RNG a training step may draw from (dropout, stochastic depth)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_record(model: PaclModel, config: dict[str, Any]) -> dict[str, Any]:
    """An exported model: the config needed to rebuild it plus its state dict on the CPU."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    return {"config": dict(config), "state_dict": state}


def save_model(path: Path, model: PaclModel, config: dict[str, Any]) -> None:
    """Write a PACL model that `load_model` rebuilds. `config` must hold `visual_encoder`,
    `text_dim`, `embed_dim` and `temperature`; anything else (image size, normalisation,
    text encoder settings) travels along for the model's users."""
    save_torch(path, model_record(model, config))


def load_model(path: Path) -> tuple[PaclModel, dict[str, Any]]:
    """Rebuild a saved PACL model (architecture from its spec, random init) and load its weights."""
    record = load_torch(path)
    config = record["config"]
    model, _ = build_pacl_model(config["visual_encoder"], text_dim=int(config["text_dim"]),
                                embed_dim=int(config["embed_dim"]), pretrained=False,
                                temperature=float(config["temperature"]))
    model.load_state_dict(record["state_dict"])
    return model.eval(), config


def backbone_state(model: PaclModel) -> dict[str, torch.Tensor]:
    """The visual tower alone, as the plain state dict timm / open_clip towers load."""
    return {name: tensor.detach().cpu() for name, tensor in model.visual.state_dict().items()}
