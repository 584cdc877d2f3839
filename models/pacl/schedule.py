"""Optimiser and learning-rate schedule of PACL pretraining.

AdamW with one learning rate for the visual backbone and another for the two projection heads
(the paper, per architecture: `PAPER_BACKBONE_LRS`, heads 1e-3). Norm, bias and other 1-d
parameters get no weight decay. The schedule is a linear warm-up followed by cosine decay and
is stepped once per OPTIMISER step with its length counted in optimiser steps (the public code
stepped per step but counted its length in epochs, so its "cosine" barely moved).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from affectflow.models.specs import HF_HUB, parse_visual_spec

if TYPE_CHECKING:
    import torch
    from torch.optim import AdamW
    from torch.optim.lr_scheduler import LambdaLR

    from affectflow.models.pacl.model import PaclModel

BACKBONE_GROUPS = ("backbone", "backbone_no_decay")
HEAD_GROUP = "heads"

PAPER_HEAD_LR = 1e-3
PAPER_BACKBONE_LRS: tuple[tuple[str, str, str, float], ...] = (
    ("timm", "resnet", "ResNet-50", 1e-3),
    ("timm", "vit_", "ViT-base", 1e-5),
    ("timm", "swin", "Swin-base", 2e-5),
    ("open_clip", "ViT-", "ViT-clip", 1e-5),
)
"""(spec family, architecture name prefix, the paper's model, its backbone lr in PACL pretraining).
The paper gives one lr per backbone it trained; a prefix extends it to that backbone's family
(`timm:resnet101` gets ResNet-50's), and other architectures must set the lr themselves."""


def architecture_name(spec: str) -> tuple[str, str]:
    """(family, bare architecture) of a visual spec: tags and the timm hub org are dropped
    (`timm:hf-hub:timm/resnet50.a1_in1k` -> ("timm", "resnet50"))."""
    parsed = parse_visual_spec(spec)
    name = parsed.name
    if name.startswith(HF_HUB):
        name = name[len(HF_HUB):].rsplit("/", 1)[-1]
    return parsed.family, name.split(".", 1)[0] if parsed.family == "timm" else name


PaperLrs = tuple[tuple[str, str, str, float], ...]


def paper_backbone_lr(spec: str, table: PaperLrs = PAPER_BACKBONE_LRS) -> tuple[str, float] | None:
    """(the paper's model, its backbone lr) for the architecture a visual spec names, if any;
    `table` is pretraining's by default (the probe passes its fine-tuning table)."""
    family, name = architecture_name(spec)
    for table_family, prefix, model, lr in table:
        if family == table_family and name.startswith(prefix):
            return model, lr
    return None


def build_optimizer(model: PaclModel, backbone_lr: float, head_lr: float,
                    weight_decay: float, fused: bool = False) -> AdamW:
    """AdamW over named groups: backbone (decayed), backbone 1-d params (not decayed), heads;
    `fused` updates every tensor in one kernel (GPUs)."""
    from torch.optim import AdamW

    decayed = [p for p in model.visual.parameters() if p.requires_grad and p.ndim > 1]
    not_decayed = [p for p in model.visual.parameters() if p.requires_grad and p.ndim <= 1]
    heads = [p for module in (model.image_projection, model.text_projection)
             for p in module.parameters()]
    groups = [
        {"name": BACKBONE_GROUPS[0], "params": decayed, "lr": backbone_lr,
         "weight_decay": weight_decay},
        {"name": BACKBONE_GROUPS[1], "params": not_decayed, "lr": backbone_lr, "weight_decay": 0.0},
        {"name": HEAD_GROUP, "params": heads, "lr": head_lr, "weight_decay": weight_decay},
    ]
    return AdamW([group for group in groups if group["params"]], fused=fused or None)


class WarmupCosine:
    """Multiplier of the base lr at optimiser step s: linear warm-up, then cosine to a floor.

    Step s (0-based) is the step about to be taken: during warm-up the multiplier rises as
    (s + 1) / warmup_steps, so the first step already moves; afterwards it follows
    min_ratio + (1 - min_ratio) * (1 + cos(pi * t)) / 2 with t the fraction of the decay
    steps already taken.
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}")
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    min_ratio: float) -> LambdaLR:
    """LambdaLR over every group with the warm-up + cosine multiplier (step it per optimiser step)."""
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps, min_ratio))


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current learning rate of the backbone and of the heads, for the history table."""
    by_name = {group["name"]: float(group["lr"]) for group in optimizer.param_groups}
    backbone = next((by_name[name] for name in BACKBONE_GROUPS if name in by_name), float("nan"))
    return {"lr_backbone": backbone, "lr_heads": by_name.get(HEAD_GROUP, float("nan"))}
