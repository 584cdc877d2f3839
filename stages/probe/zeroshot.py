"""Zero-shot classification through PACL's projection heads.

Class prompts (the paper: "A photo with [C] emotion." and "The photo makes me feel so [C]!")
are embedded by the same frozen text encoder, with the same settings, that produced the
training text features (the teacher stage's, recorded in the PACL model's config); the PACL
text projection maps them into the shared space. Each prompt is scored on its own, as the
paper's Table 3 reports them; the ensemble (a class's prompt embeddings averaged,
`PaclModel.encode_prompts`) is an option. An image's score for a class is the cosine of its
projected image embedding and the class embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

    from affectflow.models.pacl.model import PaclModel


PAPER_PROMPTS = ("A photo with {} emotion.", "The photo makes me feel so {}!")
ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class PromptVariant:
    """One zero-shot row: a single template (its index) or the ensemble of all (None)."""

    key: str  # evaluation name in tables: zero_shot/p1, zero_shot/p2, ..., zero_shot/ensemble
    title: str
    template: int | None


def prompt_variants(templates: list[str], ensemble: bool) -> list[PromptVariant]:
    """Every template on its own, then the ensemble when asked for."""
    variants = [PromptVariant(f"zero_shot/p{index + 1}",
                              f'Zero-shot "{template.replace("{}", "[C]")}"', index)
                for index, template in enumerate(templates)]
    if ensemble:
        variants.append(PromptVariant(f"zero_shot/{ENSEMBLE}",
                                      f"Zero-shot, ensemble of {len(templates)} prompts", None))
    return variants


def class_prompts(class_names: list[str], templates: list[str]) -> list[str]:
    """Prompts class by class: every template for class 0, then for class 1, ..."""
    return [template.format(name) for name in class_names for template in templates]


def prompt_features(text_encoder: dict[str, Any], class_names: list[str], templates: list[str],
                    device: str | None) -> Tensor:
    """(classes, templates, text_dim) features of the prompts from the teacher the PACL model
    was trained against (`text_encoder`: its recorded settings)."""
    from affectflow.stages.text_encoding import load_recorded_encoder

    encoder = load_recorded_encoder(text_encoder, device)
    features = encoder.encode(class_prompts(class_names, templates))
    return features.view(len(class_names), len(templates), -1)


def zero_shot_cosines(model: PaclModel, backbone_features: np.ndarray, prompts: Tensor,
                      variant: PromptVariant) -> np.ndarray:
    """Cosine similarities (images x classes) of projected image features and the class
    embeddings of one variant; `prompts` is (classes, templates, text_dim)."""
    import torch
    import torch.nn.functional as F

    chosen = prompts if variant.template is None else prompts[:, variant.template]
    with torch.no_grad():
        weight = model.image_projection.weight
        images = F.normalize(torch.from_numpy(backbone_features).to(weight) @ weight.T, dim=-1)
        classes = model.encode_prompts(chosen.to(weight))
        return (images @ classes.T).cpu().numpy()
