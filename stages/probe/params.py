"""Params of the `probe` stage (defaults: the paper's downstream settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from affectflow.core.stage import StageParams
from affectflow.stages.param_types import Device
from affectflow.stages.probe.linear import HeadTraining
from affectflow.stages.probe.zeroshot import PAPER_PROMPTS

Evaluation = Literal["linear", "finetune", "zero_shot"]


class ProbeParams(StageParams):
    """Which evaluations run, and how each trains."""

    evaluations: list[Evaluation] = Field(default_factory=lambda: ["linear", "zero_shot"],
                                          min_length=1)
    linear_epochs: int = Field(40, ge=1)
    linear_lr: float = Field(1e-2, gt=0)
    linear_batch_size: int = Field(64, ge=1)
    linear_weight_decay: float = Field(0.0, ge=0)
    finetune_epochs: int = Field(10, ge=1)
    finetune_backbone_lr: float = Field(1e-4, gt=0, description="paper: ResNet-50 1e-4, ViTs 1e-5")
    finetune_head_lr: float = Field(1e-3, gt=0)
    finetune_batch_size: int = Field(32, ge=2)
    finetune_weight_decay: float = Field(0.01, ge=0)
    prompts: list[str] = Field(default_factory=lambda: list(PAPER_PROMPTS), min_length=1)
    batch_size: int = Field(64, ge=1, description="feature extraction batch")
    seed: int = 0
    device: Device = None

    @field_validator("evaluations")
    @classmethod
    def _unique(cls, value: list[Evaluation]) -> list[Evaluation]:
        if len(set(value)) != len(value):
            raise ValueError(f"evaluations {value} lists one twice; name each of linear, "
                             "finetune, zero_shot at most once")
        return value

    @field_validator("prompts")
    @classmethod
    def _one_placeholder(cls, value: list[str]) -> list[str]:
        for prompt in value:
            if prompt.count("{}") != 1:
                raise ValueError(f"prompt {prompt!r} must contain '{{}}' exactly once, where the "
                                 "class name goes, e.g. 'A photo with {} emotion.'")
        return value

    def linear_training(self) -> HeadTraining:
        return HeadTraining(self.linear_epochs, self.linear_lr, self.linear_batch_size,
                            self.linear_weight_decay, self.seed)

    def finetune_training(self) -> HeadTraining:
        return HeadTraining(self.finetune_epochs, self.finetune_head_lr, self.finetune_batch_size,
                            self.finetune_weight_decay, self.seed)
