"""PACL's files: the training checkpoints (resume) and the exported two-tower models.

`initial.pt` holds the model before any step (the "before PACL" encoder), `last.pt` the state
after the latest finished epoch or interruption, `final.pt` the trained model and its history.
An exported model is its config (enough to rebuild the architecture) plus its state dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from affectflow.models.checkpoints import load_torch
from affectflow.models.pacl.model import PaclModel, build_pacl_model

CHECKPOINT_FILE = "last.pt"
INITIAL_FILE = "initial.pt"
FINAL_FILE = "final.pt"


def model_record(model: PaclModel, config: dict[str, Any]) -> dict[str, Any]:
    """An exported model: the config needed to rebuild it plus its state dict on the CPU."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    return {"config": dict(config), "state_dict": state}


def load_model(path: Path) -> tuple[PaclModel, dict[str, Any]]:
    """Rebuild a saved PACL model (architecture from its spec, random init) and load its weights.

    The config holds `visual_encoder`, `text_dim`, `embed_dim` and `temperature`; anything else
    (image size, normalisation, text encoder settings) travels along for the model's users.
    """
    record = load_torch(path)
    config = record["config"]
    model, _ = build_pacl_model(config["visual_encoder"], text_dim=int(config["text_dim"]),
                                embed_dim=int(config["embed_dim"]), pretrained=False,
                                temperature=float(config["temperature"]))
    model.load_state_dict(record["state_dict"])
    return model.eval(), config
