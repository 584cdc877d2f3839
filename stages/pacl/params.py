"""Params of the `pacl` stage: validated at config time, with messages naming the key and the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from affectflow.core.stage import StageParams
from affectflow.core.torchrun import TorchrunNodes
from affectflow.models.pacl.losses import (
    ALL_PARTITIONS,
    DEFAULT_CANDIDATES,
    LOSS_WEIGHT_PRESETS,
    Candidates,
    PaclLossWeights,
)
from affectflow.models.pacl.schedule import PAPER_BACKBONE_LRS, PAPER_HEAD_LR, paper_backbone_lr
from affectflow.models.specs import check_visual_spec
from affectflow.stages.param_types import Device, VisualEncoder

if TYPE_CHECKING:
    from affectflow.models.pacl.train import PaclTrainConfig

PARTITION_KEYS = tuple(part.key for part in ALL_PARTITIONS)
PAPER_LRS_TEXT = ", ".join(f"{model} {lr:g}" for _, _, model, lr in PAPER_BACKBONE_LRS)


class PaclParams(StageParams, TorchrunNodes):
    """Encoder, schedule and optimiser of PACL pretraining (defaults: the paper's ResNet-50 run);
    `processes` per node and the torchrun node fields (`nnodes`, `rdzv_endpoint`, `rdzv_id`)."""

    visual_encoder: VisualEncoder = Field("timm:resnet50", description="timm:<name>[:<file>] or "
                                "open_clip:<arch>[:<tag or file>] / open_clip:local-dir:<folder>")
    pretrained: bool = Field(True, description="load the spec's weights; false = random init")
    k: int = Field(2, ge=2, description="which cluster columns to read: factual_k{k}, emotional_k{k}")
    embed_dim: int = Field(768, ge=1, description="shared embedding width of both projections")
    temperature: float = Field(0.07, gt=0, le=1)
    image_size: int | None = Field(None, ge=16, description="default: the encoder's input size")
    epochs: int = Field(30, ge=1, description="pretraining epochs; the loss schedule uses thirds")
    samples_per_partition: int = Field(16, ge=1, description="per active partition per micro-batch")
    accumulation_steps: int = Field(1, ge=1)
    backbone_lr: float | None = Field(None, gt=0, description="default: the paper's lr for the "
                                      f"encoder's architecture ({PAPER_LRS_TEXT})")
    head_lr: float = Field(PAPER_HEAD_LR, gt=0, description="both projections (paper: 1e-3)")
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="share of steps in linear warm-up")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a share of the lr")
    max_grad_norm: float | None = Field(1.0, gt=0, description="null = no clipping")
    loss_weights: Literal["paper", "public_code"] | dict[str, float] = Field(
        "paper", description="paper: L1+L2+L3+L4 (Eq. 16-17); public_code: 1/.6/.6/.1; or "
                             "{strong: .., partial_emotional: .., partial_factual: .., weak: ..}")
    candidates: Candidates = Field(DEFAULT_CANDIDATES, description="partition: each loss over its "
                                   "partition's sub-batch (paper); batch: every sample a candidate")
    crop_scale: tuple[float, float] = Field((0.5, 1.0), description="random resized crop area range")
    seed: int = 0
    processes: int = Field(1, ge=1, description="processes on this node; > 1 (or nnodes > 1) "
                           "launches torchrun")
    sync_batchnorm: bool = Field(True, description="SyncBatchNorm across GPU processes")
    device: Device = None
    cpu_threads: int | None = Field(None, ge=1, description="torch CPU threads per training "
                                    "process (default: torch's); 1 is faster for tiny encoders")

    @field_validator("loss_weights")
    @classmethod
    def _known_partitions(cls, value: str | dict[str, float]) -> str | dict[str, float]:
        """A dict names partitions (unnamed ones keep the paper's weight 1)."""
        if isinstance(value, str):
            return value
        unknown = sorted(set(value) - set(PARTITION_KEYS))
        if unknown:
            raise ValueError(f"unknown partitions {unknown}; use {list(PARTITION_KEYS)} or a "
                             f"preset name: {sorted(LOSS_WEIGHT_PRESETS)}")
        paper = LOSS_WEIGHT_PRESETS["paper"]
        merged = {key: value.get(key, paper.of(part)) for key, part in zip(PARTITION_KEYS, ALL_PARTITIONS)}
        PaclLossWeights(**merged)
        return merged

    @field_validator("crop_scale")
    @classmethod
    def _crop_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"crop_scale {value} must satisfy 0 < min <= max <= 1, e.g. [0.5, 1.0]")
        return value

    @model_validator(mode="after")
    def _pretrained_open_clip_names_weights(self) -> PaclParams:
        check_visual_spec(self.visual_encoder, self.pretrained)
        return self

    @model_validator(mode="after")
    def _backbone_lr_known(self) -> PaclParams:
        if self.backbone_lr is None and paper_backbone_lr(self.visual_encoder) is None:
            raise ValueError(f"backbone_lr is not set and the paper gives no learning rate for "
                             f"{self.visual_encoder!r} (it has {PAPER_LRS_TEXT}); set backbone_lr")
        return self

    @model_validator(mode="after")
    def _batch_splits_over_processes(self) -> PaclParams:
        world_size = self.processes * self.nnodes
        if self.samples_per_partition % world_size:
            raise ValueError(f"samples_per_partition ({self.samples_per_partition}) must be a "
                             f"multiple of processes x nnodes ({world_size}) so every process "
                             "gets an equal slice of each micro-batch")
        return self

    def weights(self) -> PaclLossWeights:
        if isinstance(self.loss_weights, str):
            return LOSS_WEIGHT_PRESETS[self.loss_weights]
        return PaclLossWeights(**self.loss_weights)

    def train_config(self) -> PaclTrainConfig:
        from affectflow.models.pacl.train import PaclTrainConfig

        return PaclTrainConfig(
            visual_encoder=self.visual_encoder, pretrained=self.pretrained,
            embed_dim=self.embed_dim, temperature=self.temperature, image_size=self.image_size,
            epochs=self.epochs, samples_per_partition=self.samples_per_partition,
            accumulation_steps=self.accumulation_steps, backbone_lr=self.backbone_lr,
            head_lr=self.head_lr, weight_decay=self.weight_decay,
            warmup_fraction=self.warmup_fraction, min_lr_ratio=self.min_lr_ratio,
            max_grad_norm=self.max_grad_norm,
            loss_weights=self.weights().in_partition_order(), candidates=self.candidates,
            crop_scale=self.crop_scale, seed=self.seed, sync_batchnorm=self.sync_batchnorm)
