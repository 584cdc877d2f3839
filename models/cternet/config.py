"""Validated configuration of a CTERNet model, checked before any weights are built."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

Counterfactual = Literal["random", "uniform", "reversed", "shuffled"]
Mode = Literal["vanilla", "smad_f", "full"]
# Each choice below: the paper's reading first (the default), then the named variants; the
# deviations table in docs/cternet.md says where each comes from.
SentimentMap = Literal["raw_sum", "raw_mean", "softmax_mean"]
Head = Literal["features", "attended"]
Branches = Literal["psa", "conv_bn_relu"]
ChannelAttentionKind = Literal["paper", "danet"]
Precision = Literal["fp32", "bf16"]
EvalCrop = Literal["shorter_side", "imagenet"]
COUNTERFACTUAL_STRATEGIES: tuple[str, ...] = get_args(Counterfactual)
MODES: tuple[str, ...] = get_args(Mode)
# PSA multi-scale branches: kernel size and convolution groups of each branch (EPSANet's design).
PSA_KERNELS = (3, 5, 7, 9)
PSA_GROUPS = (1, 4, 8, 16)


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

    Paper readings and their variants (docs/cternet.md, deviations table):
    `sentiment_map` S from class maps M_c and detection scores v_c: `raw_sum` S = sum_c v_c M_c
    (Eq. 4), `raw_mean` the same divided by the class count (public code), `softmax_mean`
    mean_c softmax(v)_c M_c (affectflow before). `head` is the classifier input: `features`
    concat(S, X) with X the backbone map (Eq. 5), `attended` concat(S, S * reduce(X)) (Fig. 2's
    "concatenate & multiplication", public code). `branches`: `psa` bias-free convolutions with
    kernels 3/5/7/9 and groups 1/4/8/16 (PSA), `conv_bn_relu` ungrouped conv + BN + ReLU.
    `channel_attention`: `paper` softmax(X X^T) (Eq. 2), `danet` softmax(max(E) - E).
    `precision`: autocast dtype of the forward pass on any device. `eval_crop`: evaluation
    pixels, `shorter_side` (resize the shorter side to input_size, centre crop; public code)
    or `imagenet` (resize to input_size / 0.875, centre crop).
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
    sentiment_map: SentimentMap = "raw_sum"
    head: Head = "features"
    branches: Branches = "psa"
    channel_attention: ChannelAttentionKind = "paper"
    precision: Precision = "fp32"
    eval_crop: EvalCrop = "shorter_side"

    def __post_init__(self) -> None:
        # Whether timm knows the name is asked at preflight (models/weights_cache.py): timm's
        # registry imports torch, and this check runs wherever a config is validated.
        if not isinstance(self.backbone, str) or not self.backbone:
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
        for name, kind in (("sentiment_map", SentimentMap), ("head", Head), ("branches", Branches),
                           ("channel_attention", ChannelAttentionKind), ("precision", Precision),
                           ("eval_crop", EvalCrop)):
            _require_choice(name, getattr(self, name), get_args(kind))
        if self.branches == "psa" and self.branch_channels % max(PSA_GROUPS):
            raise ValueError(
                f"branch_channels: {self.branch_channels} is not divisible by the PSA branches' "
                f"convolution groups {PSA_GROUPS}; use a multiple of {max(PSA_GROUPS)} "
                "(e.g. 16) or branches: conv_bn_relu"
            )
        _require_weight("detection_weight", self.detection_weight)
        _require_weight("effect_weight", self.effect_weight)
        if self.mode == "vanilla" and self.effect_weight == 0:
            raise ValueError(
                "effect_weight: must be > 0 in mode 'vanilla', where it weighs the only loss term"
            )
        if self.detection_weight == 0 and self.effect_weight == 0:
            raise ValueError("detection_weight, effect_weight: at least one must be > 0")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], complete: bool = False) -> CTERNetConfig:
        """Build from a parsed mapping; unknown keys fail instead of being ignored. With
        `complete`, every key must be present (a saved model: a default filled in for a key it
        lacks could silently build another architecture than the one that was trained)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: unknown CTERNet config key(s); valid keys are {sorted(known)}"
            )
        missing = sorted(known - set(values)) if complete else []
        if missing:
            raise ValueError(f"{', '.join(missing)}: missing from the saved CTERNet config")
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
