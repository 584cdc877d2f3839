"""PACL pretraining loop: partition-balanced batches, progressive losses, resumable checkpoints.

One optimiser step = `accumulation_steps` micro-batches; each micro-batch holds
`samples_per_partition` samples of every partition whose loss is active in this epoch
(`active_losses`: thirds of the PRETRAINING epochs). Contrastive negatives stay within a
micro-batch, so accumulation adds samples per step, not negatives per anchor. The text tower is
frozen: its features are given, only their projection trains.

Reproducibility: weights are initialised from `seed`; batches, crops and flips are drawn from
generators seeded by (seed, epoch) and (seed, step), and the torch RNG is checkpointed, so a
run resumed from `last.pt` continues exactly as the uninterrupted run would have. Under
torchrun each rank loads only its slice of every micro-batch; the loss is computed on the
gathered global micro-batch and scaled by the world size so DDP's gradient average equals
the single-process gradient (clipping and AdamW then see the same numbers).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from affectflow.core.progress import Progress
from affectflow.models.checkpoints import capture_rng, load_torch, restore_rng, save_torch
from affectflow.models.distributed import DistContext, single_process, wrap_for_data_parallel
from affectflow.models.pacl.augment import ViewConfig, crop_boxes, load_size, train_views
from affectflow.models.pacl.checkpoint import CHECKPOINT_FILE, INITIAL_FILE, model_record
from affectflow.models.pacl.losses import (
    ALL_PARTITIONS,
    CANDIDATE_MODES,
    DEFAULT_CANDIDATES,
    DEFAULT_TEMPERATURE,
    Candidates,
    PaclLossWeights,
    Partition,
    active_losses,
    gather_with_local_grad,
    pacl_loss,
)
from affectflow.models.pacl.model import PaclModel, build_pacl_model
from affectflow.models.pacl.sampler import epoch_plan, steps_per_epoch
from affectflow.models.pacl.schedule import (
    PAPER_HEAD_LR,
    build_optimizer,
    build_scheduler,
    group_lrs,
    paper_backbone_lr,
)
from affectflow.models.step_speed import DEFAULT_SPEED, FastStep, StepSpeed

logger = logging.getLogger(__name__)

# Mixes the micro-batch counter into the augmentation seed (see pacl_train_sampler).
_MICRO_STRIDE = 7_919


@dataclass(frozen=True)
class PaclTrainConfig:
    """Everything that determines the trained weights (and nothing that does not)."""

    visual_encoder: str
    pretrained: bool = True
    embed_dim: int = 768
    temperature: float = DEFAULT_TEMPERATURE
    image_size: int | None = None
    epochs: int = 30
    samples_per_partition: int = 16
    accumulation_steps: int = 1
    backbone_lr: float | None = None  # None: the paper's lr for the architecture (PAPER_BACKBONE_LRS)
    head_lr: float = PAPER_HEAD_LR
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    loss_weights: tuple[float, float, float, float] = PaclLossWeights().in_partition_order()
    candidates: Candidates = DEFAULT_CANDIDATES
    crop_scale: tuple[float, float] = (0.5, 1.0)
    seed: int = 0
    sync_batchnorm: bool = True

    def __post_init__(self) -> None:
        positive = ("embed_dim", "epochs", "samples_per_partition", "accumulation_steps")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.backbone_lr is None:
            paper = paper_backbone_lr(self.visual_encoder)
            if paper is None:
                raise ValueError(f"backbone_lr is None but the paper gives no learning rate for "
                                 f"{self.visual_encoder!r}; pass backbone_lr")
            object.__setattr__(self, "backbone_lr", paper[1])
        for name in ("backbone_lr", "head_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None (no clipping), got {self.max_grad_norm}")
        PaclLossWeights(*self.loss_weights)
        if self.candidates not in CANDIDATE_MODES:
            raise ValueError(f"candidates must be one of {CANDIDATE_MODES}, got {self.candidates!r}")

    @property
    def weights(self) -> PaclLossWeights:
        return PaclLossWeights(*self.loss_weights)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PaclTrainConfig:
        tuples = {spec.name for spec in fields(cls) if str(spec.type).startswith("tuple")}
        return cls(**{key: tuple(value) if key in tuples else value for key, value in values.items()})


@dataclass
class PaclTrainingSet:
    """Training samples in memory: frozen text features and the per-sample labels."""

    text_features: Tensor  # (N, text_dim) float32
    partition: Tensor  # (N,) int64 Partition ids
    factual_cluster: Tensor  # (N,) int64
    emotional_cluster: Tensor  # (N,) int64

    def __post_init__(self) -> None:
        self.text_features = self.text_features.float()
        count = self.text_features.shape[0]
        for name in ("partition", "factual_cluster", "emotional_cluster"):
            labels = getattr(self, name).long()
            if labels.shape != (count,):
                raise ValueError(f"{name} must have shape ({count},), got {tuple(labels.shape)}")
            setattr(self, name, labels)

    @property
    def text_dim(self) -> int:
        return int(self.text_features.shape[1])

    def __len__(self) -> int:
        return int(self.text_features.shape[0])


class ImageSource(Protocol):
    """Decoded images as uint8 squares, batch by batch in the order asked for."""

    def squares(self, batches: Sequence[Tensor], side: int) -> Iterator[Tensor]:
        """Yield one (len(batch), 3, side, side) uint8 tensor per index batch."""
        ...


@dataclass
class TrainHooks:
    """Optional callbacks: after every optimiser step (its history row) and every epoch."""

    on_step: Callable[[dict[str, Any]], None] | None = None
    on_epoch_end: Callable[[int], None] | None = None


@dataclass
class TrainResult:
    model: PaclModel
    model_config: dict[str, Any]
    history: dict[str, list[Any]]
    epoch_steps: list[int]
    resumed_at_step: int


@dataclass
class _Position:
    """Where training stands: the next epoch and step to run, and the rows logged so far."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: dict[str, list[Any]] = field(default_factory=dict)


def training_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on GPUs (the loss itself runs in float32), full precision on CPUs."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def schedule_epochs(data: PaclTrainingSet, config: PaclTrainConfig) -> list[int]:
    """Optimiser steps of every epoch (epochs pass over their largest ACTIVE partition)."""
    return [steps_per_epoch(data.partition, active_losses(epoch, config.epochs),
                            config.samples_per_partition, config.accumulation_steps)
            for epoch in range(config.epochs)]


def _check_inputs(config: PaclTrainConfig, data: PaclTrainingSet, context: DistContext) -> None:
    if not bool((data.partition == int(Partition.STRONG)).any()):
        raise ValueError("no strong-partition samples: the first third of PACL trains L1 on them "
                         "only; lower the partition thresholds or add data")
    if config.samples_per_partition % context.world_size:
        raise ValueError(f"samples_per_partition ({config.samples_per_partition}) must be a "
                         f"multiple of the number of processes ({context.world_size})")


def _new_history() -> dict[str, list[Any]]:
    columns = ["step", "epoch", "active", "loss", *[f"loss_{p.key}" for p in ALL_PARTITIONS],
               "lr_backbone", "lr_heads", "grad_norm", "samples_per_s"]
    return {name: [] for name in columns}


def augmentation_boxes(seed: int, micro_index: int, count: int, side: int,
                       view: ViewConfig) -> Tensor:
    """Crop boxes of the `micro_index`-th micro-batch of a run (counted over all steps), for
    its whole global batch: a pure function of the seed, so ranks and resumed runs agree."""
    generator = torch.Generator().manual_seed(seed * _MICRO_STRIDE + micro_index + 1)
    return crop_boxes(count, side, view, generator)


class _Trainer:
    """The state of one training run and the steps that advance it."""

    def __init__(self, config: PaclTrainConfig, data: PaclTrainingSet, images: ImageSource,
                 checkpoint_dir: Path, context: DistContext, hooks: TrainHooks,
                 speed: StepSpeed) -> None:
        self.config, self.data, self.images = config, data, images
        self.checkpoint_dir, self.context, self.hooks = checkpoint_dir, context, hooks
        torch.manual_seed(config.seed)
        self.model, backbone = build_pacl_model(config.visual_encoder, data.text_dim, config.embed_dim,
                                                config.pretrained, config.temperature)
        image_size = config.image_size or backbone.image_size[0]
        self.view = ViewConfig(image_size, backbone.mean, backbone.std, config.crop_scale)
        self.side = load_size(image_size)
        self.model_config = {"visual_encoder": config.visual_encoder, "text_dim": data.text_dim,
                             "embed_dim": config.embed_dim, "temperature": config.temperature,
                             "image_size": image_size, "mean": list(backbone.mean),
                             "std": list(backbone.std)}
        self.model.to(context.device)
        assert config.backbone_lr is not None  # resolved in PaclTrainConfig.__post_init__
        self.fast = FastStep(speed, context.device, self.model)
        self.optimizer = build_optimizer(self.model, config.backbone_lr, config.head_lr,
                                         config.weight_decay, **self.fast.optimizer_options())
        self.epoch_steps = schedule_epochs(data, config)
        total = sum(self.epoch_steps)
        self.scheduler = build_scheduler(self.optimizer, total, min(round(config.warmup_fraction * total),
                                                                     total - 1), config.min_lr_ratio)
        self.position = _Position(history=_new_history())
        self.rng_at_step_start = capture_rng()
        self.updating = False

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_payload(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "epoch": self.position.epoch, "step_in_epoch": self.position.step_in_epoch,
                "global_step": self.position.global_step, "history": self.position.history,
                "rng": self.rng_at_step_start}

    def save_checkpoint(self) -> None:
        if self.context.is_main:
            save_torch(self.checkpoint_dir / CHECKPOINT_FILE, self._checkpoint_payload())

    def resume_or_start(self) -> int:
        """Load `last.pt` when present (same config only); else save the initial model."""
        path = self.checkpoint_dir / CHECKPOINT_FILE
        if not path.is_file():
            if self.context.is_main:
                save_torch(self.checkpoint_dir / INITIAL_FILE,
                           model_record(self.model, self.model_config))
            return 0
        payload = load_torch(path)
        if payload["config"] != self.config.to_dict():
            raise ValueError(f"checkpoint {path} was written with another training config; "
                             "delete it or train into a fresh folder")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.position = _Position(payload["epoch"], payload["step_in_epoch"], payload["global_step"],
                                  payload["history"])
        restore_rng(payload["rng"])
        self.rng_at_step_start = payload["rng"]
        logger.info("resuming PACL training at epoch %d, step %d", self.position.epoch + 1,
                    self.position.global_step)
        return self.position.global_step

    # ------------------------------------------------------------------ steps
    def _micro_batches(self, plan: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        """(global indices, local uint8 squares) for every micro-batch of the remaining plan."""
        flat = [micro for step in plan for micro in step]
        local = [micro[self.context.local_slice(len(micro))] for micro in flat]
        yield from zip(flat, self.images.squares(local, self.side))

    def _step(self, trainer: nn.Module, micro_batches: Iterable[tuple[Tensor, Tensor]],
              active: tuple[Partition, ...], started: float) -> dict[str, Any]:
        """One optimiser step over `accumulation_steps` micro-batches; returns its history row.

        `started` is when fetching its images began, so samples/s includes waiting for data.
        """
        config, context, device = self.config, self.context, self.context.device
        totals, per_partition, samples = [], {p.key: [] for p in active}, 0
        for micro, (indices, squares) in enumerate(micro_batches):
            boxes = augmentation_boxes(
                config.seed, self.position.global_step * config.accumulation_steps + micro,
                len(indices), self.side, self.view)
            local = context.local_slice(len(indices))
            pixels = self.fast.inputs(train_views(squares.to(device, non_blocking=True),
                                                  boxes[local], self.view))
            texts = self.data.text_features[indices[local]].to(device, non_blocking=True)
            last = micro == config.accumulation_steps - 1
            sync = contextlib.nullcontext() if last or context.world_size == 1 else trainer.no_sync()
            with sync:
                with training_autocast(device):
                    image_embeddings, text_embeddings = trainer(pixels, texts)
                image_embeddings, text_embeddings = gather_with_local_grad(image_embeddings,
                                                                           text_embeddings)
                total, parts = pacl_loss(
                    image_embeddings, text_embeddings, self.data.partition[indices].to(device),
                    self.data.factual_cluster[indices].to(device),
                    self.data.emotional_cluster[indices].to(device), active, config.weights,
                    float(self.model.logit_scale), config.candidates)
                (total * context.world_size / config.accumulation_steps).backward()
            totals.append(float(total.detach()))
            for key, value in parts.items():
                per_partition[key].append(float(value))
            samples += len(indices)
        max_norm = config.max_grad_norm if config.max_grad_norm is not None else float("inf")
        grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        lrs = group_lrs(self.optimizer)
        self.updating = True
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        row = {"step": self.position.global_step + 1, "epoch": self.position.epoch,
               "active": ",".join(p.key for p in active), "loss": sum(totals) / len(totals),
               **{f"loss_{p.key}": (sum(per_partition[p.key]) / len(per_partition[p.key])
                                    if p in active else float("nan")) for p in ALL_PARTITIONS},
               **lrs, "grad_norm": grad_norm,
               "samples_per_s": samples / max(time.perf_counter() - started, 1e-9)}
        for key, value in row.items():
            self.position.history[key].append(value)
        self.position.global_step += 1
        self.position.step_in_epoch += 1
        self.rng_at_step_start = capture_rng()
        self.updating = False
        return row

    def run(self) -> TrainResult:
        resumed_at = self.resume_or_start()
        trainer = self.fast.compiled(wrap_for_data_parallel(self.model, self.context,
                                                            self.config.sync_batchnorm))
        trainer.train()
        total = sum(self.epoch_steps)
        progress = Progress("pacl", total=total - resumed_at, unit="steps", interval=5.0) \
            if self.context.is_main else None
        try:
            while self.position.epoch < self.config.epochs:
                self._run_epoch(trainer, progress)
        except KeyboardInterrupt:
            if not self.updating:
                self.save_checkpoint()
                logger.warning("interrupted: checkpoint saved at step %d", self.position.global_step)
            raise
        if progress is not None:
            progress.close()
        self.model.eval()
        return TrainResult(self.model, self.model_config, self.position.history, self.epoch_steps,
                           resumed_at)

    def _run_epoch(self, trainer: nn.Module, progress: Progress | None) -> None:
        config, epoch = self.config, self.position.epoch
        active = active_losses(epoch, config.epochs)
        plan = epoch_plan(self.data.partition, active, config.samples_per_partition,
                          config.accumulation_steps, config.seed, epoch)
        remaining = plan[self.position.step_in_epoch:]
        micro_batches = self._micro_batches(remaining)
        for _ in range(len(remaining)):
            started = time.perf_counter()
            steps = [next(micro_batches) for _ in range(config.accumulation_steps)]
            row = self._step(trainer, steps, active, started)
            if progress is not None:
                progress.advance(1, rows=sum(len(indices) for indices, _ in steps))
            if self.hooks.on_step is not None:
                self.hooks.on_step(row)
        self.position.epoch += 1
        self.position.step_in_epoch = 0
        self.save_checkpoint()
        if self.context.is_main:
            logger.info("pacl epoch %d/%d (%s): loss %.4f", epoch + 1, config.epochs,
                        "+".join(p.key for p in active), self.position.history["loss"][-1])
        if self.hooks.on_epoch_end is not None:
            self.hooks.on_epoch_end(epoch)


def train_pacl(config: PaclTrainConfig, data: PaclTrainingSet, images: ImageSource,
               checkpoint_dir: Path, context: DistContext | None = None,
               hooks: TrainHooks | None = None, speed: StepSpeed = DEFAULT_SPEED) -> TrainResult:
    """Train (or resume training of) a PACL model; checkpoints go to `checkpoint_dir`. `speed`
    says how steps use the device (models/step_speed.py); it does not change the result.

    `checkpoint_dir/initial.pt` holds the model before any step (the "before PACL" encoder),
    `checkpoint_dir/last.pt` the state after the latest finished epoch or interruption.
    """
    context = context or single_process()
    _check_inputs(config, data, context)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    return _Trainer(config, data, images, checkpoint_dir, context, hooks or TrainHooks(),
                    speed).run()
