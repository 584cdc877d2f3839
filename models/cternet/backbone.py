"""The CTERNet backbone: a timm model used for its last feature map, with explicit weight provenance.

Weights come from, in order of precedence: a local state dict of the same timm architecture
(e.g. the image tower saved by PACL pretraining), timm's normal hub loading, or random init
when the hub is unreachable. Which one was used is logged and kept on the module, because a
silently random backbone would make every downstream number meaningless.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

WEIGHTS_CHECKPOINT = "checkpoint"
WEIGHTS_PRETRAINED = "pretrained"
WEIGHTS_RANDOM = "random"


class TimmBackbone(nn.Module):
    """Wraps a headless timm model so that `forward` returns its final (B, C, H, W) feature map."""

    def __init__(self, model: nn.Module, name: str, weights_source: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.weights_source = weights_source
        self.out_channels: int = int(model.num_features)

    def forward(self, images: Tensor) -> Tensor:
        features = self.model.forward_features(images)
        if features.ndim != 4 or features.shape[1] != self.out_channels:
            raise ValueError(
                f"backbone: {self.name!r} returns features of shape {tuple(features.shape)}, "
                f"not a (batch, {self.out_channels}, height, width) map; "
                "use a convolutional timm model such as 'res2net101d' or 'resnet18'"
            )
        return features


def build_backbone(
    name: str, pretrained: bool, checkpoint: str | Path | None = None
) -> TimmBackbone:
    """Create timm model `name` without its classifier and load the requested weights."""
    if checkpoint is not None:
        model = _create_headless(name, pretrained=False)
        _load_checkpoint(model, name, Path(checkpoint))
        logger.info("CTERNet backbone %s: weights loaded from checkpoint %s", name, checkpoint)
        return TimmBackbone(model, name, WEIGHTS_CHECKPOINT)
    if pretrained:
        try:
            model = _create_headless(name, pretrained=True)
        except Exception as error:  # hub, cache and file errors all mean "no pretrained weights"
            logger.warning(
                "CTERNet backbone %s: pretrained weights could not be loaded (%s: %s); "
                "falling back to RANDOM initialisation",
                name,
                type(error).__name__,
                error,
            )
        else:
            logger.info("CTERNet backbone %s: timm pretrained weights loaded", name)
            return TimmBackbone(model, name, WEIGHTS_PRETRAINED)
    else:
        logger.info("CTERNet backbone %s: random initialisation (pretrained=False)", name)
    return TimmBackbone(_create_headless(name, pretrained=False), name, WEIGHTS_RANDOM)


def _create_headless(name: str, pretrained: bool) -> nn.Module:
    return timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="")


def _load_checkpoint(model: nn.Module, name: str, path: Path) -> None:
    """Load a plain state dict strictly; the original classifier's keys are the only ones skipped."""
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone_checkpoint: no file at {path}; give the path of a saved state dict"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"backbone_checkpoint: {path} does not hold a state dict (a mapping of names to tensors)"
        )
    classifier = str(getattr(model, "pretrained_cfg", {}).get("classifier", "fc"))
    state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        raise ValueError(
            f"backbone_checkpoint: {path} is not a state dict of timm architecture {name!r} "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. "
            f"{unexpected[:3]}, shape mismatch {len(reshaped)} e.g. {reshaped[:3]}); "
            "set backbone to the architecture the checkpoint was trained with"
        )
    model.load_state_dict(state, strict=True)
