"""Zero-shot classification through PACL's projection heads.

Class prompts (the paper: "A photo with [C] emotion." and "The photo makes me feel so [C]!")
are embedded by the same frozen text encoder, with the same settings, that produced the
training text features (the teacher stage's, recorded in the PACL model's config); the PACL
text projection maps them into the
shared space, where prompt embeddings of one class are averaged (`PaclModel.encode_prompts`).
An image's class is the prompt embedding closest to its projected image embedding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from affectflow.models.pacl.model import PaclModel
from affectflow.stages.text_encoding import load_recorded_encoder

PAPER_PROMPTS = ("A photo with {} emotion.", "The photo makes me feel so {}!")


def class_prompts(class_names: list[str], templates: list[str]) -> list[str]:
    """Prompts class by class: every template for class 0, then for class 1, ..."""
    return [template.format(name) for name in class_names for template in templates]


def prompt_features(text_encoder: dict[str, Any], class_names: list[str], templates: list[str],
                    device: str | None) -> Tensor:
    """(classes, templates, text_dim) features of the prompts from the teacher the PACL model
    was trained against (`text_encoder`: its recorded settings)."""
    encoder = load_recorded_encoder(text_encoder, device)
    features = encoder.encode(class_prompts(class_names, templates))
    return features.view(len(class_names), len(templates), -1)


def zero_shot_logits(model: PaclModel, backbone_features: np.ndarray, prompts: Tensor) -> Tensor:
    """Cosine similarities (images x classes) of projected image features and class embeddings."""
    with torch.no_grad():
        weight = model.image_projection.weight
        images = F.normalize(torch.from_numpy(backbone_features).to(weight) @ weight.T, dim=-1)
        classes = model.encode_prompts(prompts.to(weight))
        return (images @ classes.T).cpu()
