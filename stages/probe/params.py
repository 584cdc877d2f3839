"""Params of the `probe` stage (defaults: the paper's downstream settings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from affectflow.core.errors import UserError
from affectflow.core.stage import StageParams
from affectflow.core.store import MANIFEST
from affectflow.models.pacl.schedule import PaperLrs, paper_backbone_lr
from affectflow.stages.param_types import Device
from affectflow.stages.probe.linear import HeadTraining, Schedule
from affectflow.stages.probe.tasks import HierarchyHead, TaskKind
from affectflow.stages.probe.zeroshot import PAPER_PROMPTS

Evaluation = Literal["linear", "finetune", "zero_shot"]

PAPER_FINETUNE_LRS: PaperLrs = (
    ("timm", "resnet", "ResNet-50", 1e-4),
    ("timm", "vit_", "ViT-base", 1e-5),
    ("timm", "swin", "Swin-base", 1e-5),
    ("open_clip", "ViT-", "ViT-clip", 1e-5),
)
"""Fine-tuning backbone lr by architecture, in the shape of pretraining's table
(`models/pacl/schedule.py`): the paper's 1e-4 for ResNet-50 and 1e-5 for ViTs (Swin, a vision
transformer, counted with the ViTs); other architectures set `finetune_backbone_lr`."""


class ProbeParams(StageParams):
    """Which tasks and evaluations run, on which PACL run, and how each trains."""

    tasks: list[TaskKind] = Field(default_factory=lambda: ["single_label"], min_length=1)
    evaluations: list[Evaluation] = Field(default_factory=lambda: ["linear", "zero_shot"],
                                          min_length=1)
    pacl_from: Path | None = Field(
        None, description="folder of a finished pacl stage of another run "
                          "(artifacts/runs/<run id>/pacl); default: this run's pacl stage")
    hierarchy_head: HierarchyHead = "per_level"
    linear_epochs: int = Field(40, ge=1)
    linear_lr: float = Field(1e-2, gt=0)
    linear_batch_size: int = Field(64, ge=1)
    linear_weight_decay: float = Field(0.0, ge=0)
    finetune_epochs: int = Field(40, ge=1)
    finetune_backbone_lr: float | None = Field(
        None, gt=0, description="default by architecture: ResNet 1e-4, ViT / Swin 1e-5 (paper)")
    finetune_head_lr: float = Field(1e-2, gt=0)
    finetune_batch_size: int = Field(32, ge=2)
    finetune_weight_decay: float = Field(0.01, ge=0)
    lr_schedule: Schedule = "cosine"
    prompts: list[str] = Field(default_factory=lambda: list(PAPER_PROMPTS), min_length=1)
    zero_shot_ensemble: bool = Field(False, description="also score the prompts' average")
    batch_size: int = Field(64, ge=1, description="feature extraction batch")
    seed: int = 0
    device: Device = None
    cpu_threads: int | None = Field(None, ge=1, description="torch CPU threads for feature "
                                                            "extraction and fine-tuning (default: "
                                                            "torch's)")

    @field_validator("evaluations", "tasks")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"{value} lists one twice; name each at most once")
        return value

    @field_validator("prompts")
    @classmethod
    def _one_placeholder(cls, value: list[str]) -> list[str]:
        for prompt in value:
            if prompt.count("{}") != 1:
                raise ValueError(f"prompt {prompt!r} must contain '{{}}' exactly once, where the "
                                 "class name goes, e.g. 'A photo with {} emotion.'")
        return value

    @field_validator("pacl_from")
    @classmethod
    def _a_finished_pacl_stage(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        if not value.exists():
            raise ValueError(f"path does not exist: {value} (a finished pacl stage folder, "
                             "artifacts/runs/<run id>/pacl: run the pretraining config first)")
        if not (value / MANIFEST).is_file():
            raise ValueError(f"{value} holds no finished stage ({MANIFEST} is missing); finish "
                             "the pacl stage of that run first")
        stage = json.loads((value / MANIFEST).read_text()).get("stage")
        if stage != "pacl":
            raise ValueError(f"{value} holds the {stage!r} stage, not pacl; point pacl_from at "
                             "artifacts/runs/<run id>/pacl")
        return value

    @model_validator(mode="after")
    def _zero_shot_needs_classes(self) -> ProbeParams:
        if "zero_shot" in self.evaluations and self.tasks == ["regression"]:
            raise ValueError("zero_shot prompts class names, and regression has none; drop "
                             "zero_shot from evaluations or add a classification task")
        return self

    def linear_training(self) -> HeadTraining:
        return HeadTraining(self.linear_epochs, self.linear_lr, self.linear_batch_size,
                            self.linear_weight_decay, self.seed, self.lr_schedule)

    def finetune_training(self) -> HeadTraining:
        return HeadTraining(self.finetune_epochs, self.finetune_head_lr, self.finetune_batch_size,
                            self.finetune_weight_decay, self.seed, self.lr_schedule)

    def backbone_lr(self, visual_encoder: str) -> float:
        """The fine-tuning backbone lr: the configured one, else the paper's for the encoder."""
        if self.finetune_backbone_lr is not None:
            return self.finetune_backbone_lr
        paper = paper_backbone_lr(visual_encoder, PAPER_FINETUNE_LRS)
        if paper is None:
            known = ", ".join(f"{model} {lr:g}" for _, _, model, lr in PAPER_FINETUNE_LRS)
            raise UserError(f"the paper gives no fine-tuning backbone lr for the visual encoder "
                            f"{visual_encoder!r} (it has {known})",
                            hint="set probe.finetune_backbone_lr")
        return paper[1]


def pacl_params(pacl_from: Path) -> dict[str, Any]:
    """The recorded params of a finished pacl stage folder (checked by `pacl_from`'s validator)."""
    return dict(json.loads((pacl_from / MANIFEST).read_text()).get("params", {}))
