"""PACL two-tower model: a trainable visual encoder and a projection of frozen text features.

The text encoder of PACL is frozen, so its features are computed once upstream and only their
projection is trained here. Both towers end in a bias-free linear projection to a shared space
and L2 normalisation; the temperature is fixed (tau = 0.07, logit scale 1/tau).

Visual encoders are named by spec strings a user already knows:

- ``timm:<name>`` or ``timm:<name>:<checkpoint file>`` — ``timm.create_model(name,
  pretrained=..., num_classes=0)`` gives pooled features. ``<name>`` may carry a timm tag
  (``resnet50.a1_in1k``) or a timm schema (``timm:hf-hub:timm/resnet50.a1_in1k``,
  ``timm:local-dir:/models/resnet50``). A checkpoint file loads through timm's own pretrained
  loader, which drops the classifier weights.
- ``open_clip:<arch>:<tag or checkpoint file>`` — ``open_clip.create_model(arch,
  pretrained=...)`` and its ``.visual`` tower; ``open_clip:hf-hub:<repo>`` and
  ``open_clip:local-dir:<folder>`` carry their weights in the schema.

``pretrained=False`` always means random initialisation and ignores any weights in the spec.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import cast

import open_clip
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from affectflow.models.pacl.losses import DEFAULT_TEMPERATURE
from affectflow.models.specs import VisualSpec, names_a_file, parse_visual_spec


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for but could not be loaded (offline, unknown tag, bad file)."""


@dataclass
class VisualBackbone:
    """A visual encoder, the width of its pooled features and the input it expects."""

    module: nn.Module
    feature_dim: int
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _size_pair(size: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    return (int(size[-2]), int(size[-1]))


def _require_file(spec: str, path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"visual encoder spec {spec!r}: checkpoint file {path!r} does not exist")


def _build_timm(spec: str, parsed: VisualSpec, pretrained: bool) -> VisualBackbone:
    if not parsed.has_schema and not timm.is_model(parsed.name):
        raise ValueError(f"visual encoder spec {spec!r}: timm has no model {parsed.name!r}; see timm.list_models()")
    overlay: dict[str, str] | None = None
    if pretrained and parsed.weights is not None:
        _require_file(spec, parsed.weights)
        overlay = {"file": parsed.weights}
    try:
        module = timm.create_model(parsed.name, pretrained=pretrained, num_classes=0, pretrained_cfg_overlay=overlay)
    except (OSError, RuntimeError) as error:
        if not pretrained:
            raise
        raise PretrainedWeightsError(
            f"could not load pretrained weights for {spec!r} ({error}); when offline pass a local "
            "checkpoint as 'timm:<name>:<file>' or use pretrained=False for random init"
        ) from error
    data_config = timm.data.resolve_model_data_config(module)
    return VisualBackbone(
        module=module,
        feature_dim=cast(int, module.num_features),
        image_size=_size_pair(data_config["input_size"]),
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
    )


def _open_clip_feature_dim(visual: nn.Module, image_size: tuple[int, int]) -> int:
    """Declared output width, or one probe forward for towers that do not declare it."""
    declared = getattr(visual, "output_dim", None)
    if declared is not None:
        return int(declared)
    was_training = visual.training
    parameter = next(visual.parameters())
    probe = torch.zeros(1, 3, *image_size, device=parameter.device, dtype=parameter.dtype)
    visual.eval()
    try:
        with torch.no_grad():
            return int(visual(probe).shape[-1])
    finally:
        visual.train(was_training)


def _build_open_clip(spec: str, parsed: VisualSpec, pretrained: bool) -> VisualBackbone:
    has_schema = parsed.has_schema
    if not has_schema and parsed.name.replace("/", "-") not in open_clip.list_models():
        raise ValueError(
            f"visual encoder spec {spec!r}: open_clip has no architecture {parsed.name!r}; see "
            "open_clip.list_models() or register a config with open_clip.add_model_config"
        )
    if pretrained and parsed.weights is None and not has_schema:
        raise ValueError(
            f"visual encoder spec {spec!r} names no pretrained weights; add ':<tag or checkpoint file>' "
            "(e.g. 'open_clip:ViT-B-32:openai') or use pretrained=False for random init"
        )
    weights = parsed.weights if pretrained else None
    if weights is not None and names_a_file(weights):
        _require_file(spec, weights)
    try:
        clip = open_clip.create_model(
            parsed.name, pretrained=weights, load_weights=pretrained, pretrained_text=False
        )
    except (OSError, RuntimeError) as error:
        if not pretrained:
            raise
        raise PretrainedWeightsError(
            f"could not load pretrained weights for {spec!r} ({error}); when offline pass a local "
            "checkpoint as 'open_clip:<arch>:<file>' or 'open_clip:local-dir:<folder>', or use "
            "pretrained=False for random init"
        ) from error
    visual = clip.visual
    preprocess = open_clip.get_model_preprocess_cfg(clip)
    image_size = _size_pair(preprocess["size"])
    return VisualBackbone(
        module=visual,
        feature_dim=_open_clip_feature_dim(visual, image_size),
        image_size=image_size,
        mean=tuple(preprocess["mean"]),
        std=tuple(preprocess["std"]),
    )


def build_visual_encoder(spec: str, pretrained: bool = True) -> VisualBackbone:
    """Build the visual encoder named by ``spec``; see the module docstring for the grammar."""
    parsed = parse_visual_spec(spec)
    if parsed.family == "timm":
        return _build_timm(spec, parsed, pretrained)
    return _build_open_clip(spec, parsed, pretrained)


class PaclModel(nn.Module):
    """Two towers: visual encoder + projection, and a projection of precomputed text features."""

    def __init__(
        self,
        visual: nn.Module,
        visual_dim: int,
        text_dim: int,
        embed_dim: int = 768,
        temperature: float = DEFAULT_TEMPERATURE,
    ) -> None:
        super().__init__()
        for name, value in (("visual_dim", visual_dim), ("text_dim", text_dim), ("embed_dim", embed_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 < temperature <= 1:
            raise ValueError(f"temperature must be in (0, 1], got {temperature!r}; the paper uses 0.07")
        self.visual = visual
        self.image_projection = nn.Linear(visual_dim, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_dim, embed_dim, bias=False)
        self.register_buffer("logit_scale", torch.tensor(1.0 / temperature), persistent=False)

    def backbone_features(self, images: Tensor) -> Tensor:
        """Pooled visual features before projection: what linear probes and fine-tuning use."""
        return self.visual(images)

    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings in the shared space."""
        return F.normalize(self.image_projection(self.backbone_features(images)), dim=-1)

    def encode_text(self, text_features: Tensor) -> Tensor:
        """L2-normalised embeddings of precomputed frozen text features (captions or prompts)."""
        return F.normalize(self.text_projection(text_features), dim=-1)

    def encode_prompts(self, prompt_features: Tensor) -> Tensor:
        """One zero-shot class embedding per class from (C, text_dim) or (C, P, text_dim) features.

        With several prompts per class the normalised prompt embeddings are averaged and
        re-normalised (prompt ensembling), e.g. the paper's two emotion prompts.
        """
        if prompt_features.dim() == 2:
            return self.encode_text(prompt_features)
        if prompt_features.dim() != 3:
            raise ValueError(
                f"prompt_features must be (C, text_dim) or (C, P, text_dim), got {tuple(prompt_features.shape)}"
            )
        return F.normalize(self.encode_text(prompt_features).mean(dim=1), dim=-1)

    def forward(self, images: Tensor, text_features: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_image(images), self.encode_text(text_features)


def build_pacl_model(
    visual_spec: str,
    text_dim: int,
    embed_dim: int = 768,
    pretrained: bool = True,
    temperature: float = DEFAULT_TEMPERATURE,
) -> tuple[PaclModel, VisualBackbone]:
    """A PaclModel around ``build_visual_encoder(visual_spec)``; the backbone record keeps the
    input size and normalisation the image loader must apply."""
    backbone = build_visual_encoder(visual_spec, pretrained=pretrained)
    model = PaclModel(backbone.module, backbone.feature_dim, text_dim, embed_dim, temperature)
    return model, backbone
