"""Validated configuration of a CTERNet model, checked before any weights are built."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

import timm

Counterfactual = Literal["random", "uniform", "reversed", "shuffled"]
Mode = Literal["vanilla", "smad_f", "full"]
COUNTERFACTUAL_STRATEGIES: tuple[str, ...] = get_args(Counterfactual)
MODES: tuple[str, ...] = get_args(Mode)


@dataclass(frozen=True)
class CTERNetConfig:
    """Everything that decides a CTERNet's architecture and its training loss.

    `mode` selects the ablation: `vanilla` (backbone + GAP + FC), `smad_f` (+ multi-scale
    attention and class-wise pooling) or `full` (+ counterfactual attention and total effect).
    `counterfactual` (the SMAD-C strategy) matters only in `full` mode.
    `effect_weight` scales the classification term: CE(Y_TE, y) in `full`, CE(P, y) otherwise,
    because without a counterfactual the effect reduces to the factual prediction P.
    `backbone_checkpoint` (a state dict of the same timm architecture, e.g. from PACL) takes
    precedence over `pretrained` hub weights.
    """

    backbone: str = "res2net101d"
    pretrained: bool = True
    backbone_checkpoint: str | Path | None = None
    num_classes: int = 8
    k_maps: int = 4
    counterfactual: str = "random"
    mode: str = "full"
    detection_weight: float = 1.0
    effect_weight: float = 1.0
    input_size: int = 448
    attention_channels: int = 32
    branch_channels: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not timm.is_model(self.backbone):
            raise ValueError(
                f"backbone: {self.backbone!r} is not a timm model name; "
                "pick one from timm.list_models(), e.g. 'res2net101d' or 'resnet18'"
            )
        if not isinstance(self.pretrained, bool):
            raise ValueError(f"pretrained: expected true or false, got {self.pretrained!r}")
        checkpoint = self.backbone_checkpoint
        if checkpoint is not None and not isinstance(checkpoint, (str, Path)):
            raise ValueError(
                f"backbone_checkpoint: expected a file path or null, got {checkpoint!r}"
            )
        _require_int("num_classes", self.num_classes, minimum=2)
        _require_int("k_maps", self.k_maps, minimum=1)
        _require_int("input_size", self.input_size, minimum=32)
        _require_int("attention_channels", self.attention_channels, minimum=1)
        _require_int("branch_channels", self.branch_channels, minimum=1)
        _require_choice("counterfactual", self.counterfactual, COUNTERFACTUAL_STRATEGIES)
        _require_choice("mode", self.mode, MODES)
        _require_weight("detection_weight", self.detection_weight)
        _require_weight("effect_weight", self.effect_weight)
        if self.mode == "vanilla" and self.effect_weight == 0:
            raise ValueError(
                "effect_weight: must be > 0 in mode 'vanilla', where it weighs the only loss term"
            )
        if self.detection_weight == 0 and self.effect_weight == 0:
            raise ValueError("detection_weight, effect_weight: at least one must be > 0")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> CTERNetConfig:
        """Build from a parsed YAML section; unknown keys fail instead of being ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: unknown CTERNet config key(s); valid keys are {sorted(known)}"
            )
        return cls(**values)


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def _require_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


def _require_weight(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
