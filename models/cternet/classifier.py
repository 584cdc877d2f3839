"""A trained CTERNet as a folder: `model.pt` (state dict) + `config.json` (architecture, classes).

Evaluation and heat-map inspection rebuild the architecture from `config.json` with no weight
source of its own (no hub download, no PACL checkpoint) and load `model.pt` with
`weights_only=True`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from affectflow.core.atomic import write_json
from affectflow.models.checkpoints import load_torch, save_torch
from affectflow.models.cternet.config import CTERNetConfig
from affectflow.models.cternet.data import to_model_pixels
from affectflow.models.cternet.model import CTERNet, build_cternet
from affectflow.models.encoder_runtime import inference_context

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"


@dataclass
class TrainedClassifier:
    """A CTERNet in eval mode with the class names of its outputs, in output order."""

    model: CTERNet
    classes: list[str]
    device: torch.device


def config_values(config: CTERNetConfig) -> dict[str, Any]:
    """JSON-ready CTERNetConfig fields."""
    values = dataclasses.asdict(config)
    if values["backbone_checkpoint"] is not None:
        values["backbone_checkpoint"] = str(values["backbone_checkpoint"])
    return values


def save_classifier(folder: Path, state: dict[str, torch.Tensor], config: CTERNetConfig,
                    classes: list[str], info: dict[str, Any]) -> None:
    """Write the weights first and the config last: a folder with a config is complete."""
    if len(classes) != config.num_classes:
        raise ValueError(f"{len(classes)} class names for a {config.num_classes}-class model")
    save_torch(folder / MODEL_FILE, state)
    write_json(folder / CONFIG_FILE, {"cternet": config_values(config), "classes": classes,
                                      **info})


def load_classifier(folder: Path, device: torch.device | str | None = None) -> TrainedClassifier:
    """Rebuild the architecture recorded in `folder` and load its weights (eval mode)."""
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"no trained CTERNet at {folder} ({CONFIG_FILE} is missing); "
                                "run the cternet_train stage first")
    record = json.loads(config_file.read_text(encoding="utf-8"))
    values = {**record["cternet"], "pretrained": False, "backbone_checkpoint": None}
    try:
        config = CTERNetConfig.from_mapping(values, complete=True)
    except ValueError as error:
        raise ValueError(f"{config_file}: {error}; it was written by another affectflow version, "
                         "rerun the cternet_train stage") from None
    model = build_cternet(config, device=device)
    model.load_state_dict(load_torch(folder / MODEL_FILE))
    model.eval()
    return TrainedClassifier(model, list(record["classes"]), next(model.parameters()).device)


def sentiment_maps(classifier: TrainedClassifier, crops: Sequence[Image.Image]) -> np.ndarray:
    """Sentiment maps (N, S, S) in [0, 1] for the evaluation crops of the model's input size S
    (`eval_geometry`), so each map lies exactly over its crop.

    The map is the factual S, bilinearly upsampled from the feature grid and min-max scaled per
    image: it shows where the model looks, not a calibrated quantity.
    """
    if classifier.model.config.mode == "vanilla":
        raise ValueError("mode 'vanilla' has no sentiment map; train with mode smad_f or full")
    pixels = torch.stack([to_model_pixels(crop) for crop in crops]).to(classifier.device)
    with inference_context(classifier.device):
        output = classifier.model(pixels)
    assert output.sentiment_map is not None
    size = classifier.model.config.input_size
    maps = F.interpolate(output.sentiment_map.float(), size=(size, size), mode="bilinear",
                         align_corners=False)[:, 0]
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return ((maps - low) / (high - low).clamp_min(1e-12)).cpu().numpy()
