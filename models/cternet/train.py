"""Training CTERNet with the paper's recipe, selecting the best epoch on validation data.

SGD with momentum, learning rate x `lr_decay` every `step_size` epochs, random resized crop +
horizontal flip for training, resize + centre crop for evaluation; bf16 autocast on a GPU (the
model switches it on itself). The loop sees only the training and validation images it is
given, so a test split cannot leak into training or model selection.

Every epoch writes `last.pt` (resume point) and, when validation accuracy improves, `best.pt`
into `work_dir`. Calling `train_cternet` again with the same arguments resumes from `last.pt`
and gives bit-identical results to an uninterrupted run on the same device: sample order
comes from (seed, epoch), augmentation from (seed, epoch, sample), and the counterfactual
noise from the RNG state restored from the checkpoint.

With `world_size > 1` the caller has started a process group (torchrun, see
`cternet_distributed`): the model is wrapped in DistributedDataParallel, each process takes
its share of every epoch through a DistributedSampler, and process 0 writes the checkpoints.
`batch_size` is per process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from affectflow.core.atomic import write_json
from affectflow.core.hashing import hash_value
from affectflow.core.loading import PixelRequest, dataloader_options, fill_cache
from affectflow.core.pixel_cache import PixelCache, PixelStore
from affectflow.core.pixels import Decoder, PixelTransform
from affectflow.core.progress import Progress
from affectflow.models.checkpoints import capture_rng, restore_rng
from affectflow.models.cternet.checkpoint import (
    BEST_CHECKPOINT,
    ResumeState,
    load_best_model_state,
    load_last,
    resume_state,
    save_best,
    save_last,
)
from affectflow.models.cternet.classifier import config_values
from affectflow.models.cternet.config import CTERNetConfig
from affectflow.models.cternet.data import (
    EpochSampler,
    ImageDataset,
    LabelledImages,
    cached_pixels,
    eval_transform,
    train_transform,
)
from affectflow.models.cternet.model import CTERNet, build_cternet
from affectflow.models.encoder_runtime import intra_op_threads, resolve_device
from affectflow.models.step_speed import DEFAULT_SPEED, FastStep, StepSpeed

logger = logging.getLogger(__name__)

OUTCOME_FILE = "outcome.json"


@dataclass(frozen=True)
class TrainingRecipe:
    """What decides the trained weights (with the data and the CTERNetConfig)."""

    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-4
    momentum: float = 0.9
    step_size: int = 10
    lr_decay: float = 0.1
    weight_decay: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    seed: int = 0


@dataclass(frozen=True)
class Runtime:
    """Where and how training runs; none of it changes the result except the process count.

    `cache` is the pixel cache the images are read from (decoded from their files without one),
    `decoder` the JPEG decoder its entries were made with, `speed` how steps use the device
    (models/step_speed.py).
    """

    device: str | None = None
    loader_workers: int = 0
    rank: int = 0
    world_size: int = 1
    cpu_threads: int | None = None
    cache: PixelCache | None = None
    decoder: Decoder = "pil"
    speed: StepSpeed = DEFAULT_SPEED

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def pixels(self, config: CTERNetConfig) -> PixelTransform:
        return cached_pixels(config, self.decoder)

    def store(self, config: CTERNetConfig) -> PixelStore | None:
        return self.cache.store(self.pixels(config)) if self.cache is not None else None


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float
    lr: float
    images_per_second: float
    seconds: float


@dataclass
class TrainingOutcome:
    """History of every epoch and which one was selected on the validation data."""

    history: list[EpochStats]
    best_epoch: int
    best_val_accuracy: float
    resumed_from_epoch: int
    weights_source: str
    signature: str


def training_signature(config: CTERNetConfig, recipe: TrainingRecipe, train: LabelledImages,
                       val: LabelledImages, world_size: int) -> str:
    """Identity of a training: checkpoints of another training are never resumed."""
    return hash_value({"config": config_values(config), "recipe": dataclasses.asdict(recipe),
                       "train": [train.paths, train.labels, train.sha256s],
                       "val": [val.paths, val.labels, val.sha256s], "world_size": world_size})


def _check_sizes(recipe: TrainingRecipe, train: LabelledImages, val: LabelledImages,
                 runtime: Runtime) -> None:
    if len(train) < recipe.batch_size * runtime.world_size:
        raise ValueError(f"batch_size: {recipe.batch_size} x {runtime.world_size} process(es) is "
                         f"more than the {len(train)} training images; lower batch_size")
    if len(val) == 0:
        raise ValueError("validation data is empty: the best epoch is selected on it")


def _loader_generator(recipe: TrainingRecipe) -> torch.Generator:
    """A loader draws its worker seed from this instead of the global RNG, which thereby stays
    the counterfactual-noise stream alone (augmentation is seeded per sample anyway)."""
    return torch.Generator().manual_seed(recipe.seed)


def _train_loader(train: LabelledImages, recipe: TrainingRecipe, config: CTERNetConfig,
                  runtime: Runtime, device: torch.device) -> DataLoader[Any]:
    """Persistent loader processes; the sampler carries the epoch to them (`EpochSampler`)."""
    dataset = ImageDataset(train, train_transform(config.input_size, recipe.crop_scale),
                           seed=recipe.seed, store=runtime.store(config),
                           pixels=runtime.pixels(config))
    sampler = EpochSampler(DistributedSampler(
        dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=True,
        seed=recipe.seed, drop_last=True))
    return DataLoader(dataset, batch_size=recipe.batch_size, sampler=sampler, drop_last=True,
                      generator=_loader_generator(recipe),
                      **dataloader_options(runtime.loader_workers, device))


def _val_loader(val: LabelledImages, recipe: TrainingRecipe, config: CTERNetConfig,
                runtime: Runtime, device: torch.device) -> DataLoader[Any]:
    """Each process scores a disjoint slice of the validation images; counts are summed."""
    dataset = Subset(ImageDataset(val, eval_transform(config), store=runtime.store(config),
                                  pixels=runtime.pixels(config)),
                     range(runtime.rank, len(val), runtime.world_size))
    return DataLoader(dataset, batch_size=recipe.batch_size, shuffle=False,
                      generator=_loader_generator(recipe),
                      **dataloader_options(runtime.loader_workers, device))


def _restore_cache(images: LabelledImages, runtime: Runtime, config: CTERNetConfig) -> None:
    """Decode again what the cache lost (pruned, evicted, found damaged) before an epoch reads
    it; a no-op (one look at the cache folder) when nothing is missing."""
    store = runtime.store(config)
    if store is not None and images.sha256s is not None:
        fill_cache([PixelRequest(path, sha) for path, sha in zip(images.paths, images.sha256s)],
                   store, max(1, runtime.loader_workers))


def _sum_across_processes(values: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    if runtime.world_size > 1:
        dist.all_reduce(values)
    return values


def _train_epoch(model: nn.Module, loader: DataLoader[Any], optimizer: torch.optim.Optimizer,
                 device: torch.device, runtime: Runtime, progress: Progress | None,
                 fast: FastStep) -> tuple[float, float, int]:
    """(mean loss, accuracy, images) over the epoch, summed over all processes."""
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, images
    for images, labels in loader:
        images = fast.inputs(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        output = model(images, labels)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        count = labels.shape[0]
        totals += torch.stack([output.loss.detach().double() * count,
                               (output.logits.argmax(dim=1) == labels).sum().double(),
                               torch.tensor(float(count), dtype=torch.float64, device=device)])
        if progress is not None:
            progress.advance(count * runtime.world_size)
    loss_sum, correct, seen = _sum_across_processes(totals, runtime).tolist()
    return loss_sum / seen, correct / seen, int(seen)


@torch.no_grad()
def evaluate_accuracy(model: CTERNet, loader: DataLoader[Any], device: torch.device,
                      runtime: Runtime, fast: FastStep | None = None) -> float:
    """Top-1 accuracy of the model's prediction (Y_TE in `full` mode) over all processes."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for images, labels in loader:
        labels = labels.to(device)
        images = images.to(device, non_blocking=True)
        predicted = model(fast.inputs(images) if fast else images).logits.argmax(dim=1)
        totals += torch.stack([(predicted == labels).sum().double(),
                               torch.tensor(float(labels.shape[0]), dtype=torch.float64,
                                            device=device)])
    correct, seen = _sum_across_processes(totals, runtime).tolist()
    return correct / seen


def _share_buffers(model: nn.Module, runtime: Runtime) -> None:
    """BatchNorm statistics of process 0 everywhere, so validation scores the saved model."""
    if runtime.world_size > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def _gather_rng_states(runtime: Runtime) -> list[dict[str, Any]]:
    states: list[Any] = [None] * runtime.world_size
    if runtime.world_size > 1:
        dist.all_gather_object(states, capture_rng())
    else:
        states[0] = capture_rng()
    return states


def _noise_seed(seed: int, rank: int) -> int:
    """Seed of the counterfactual-noise stream of one process (distinct from model init)."""
    return seed * 1_000_003 + 7_727 * (rank + 1)


def _build(config: CTERNetConfig, recipe: TrainingRecipe, device: torch.device,
           checkpoint: dict[str, Any] | None) -> CTERNet:
    """A fresh model seeded by the recipe, or the checkpoint's architecture (weights come from
    the checkpoint, so no hub or PACL weights are fetched again)."""
    torch.manual_seed(recipe.seed)
    if checkpoint is None:
        return build_cternet(config, device=device)
    return build_cternet(dataclasses.replace(config, pretrained=False, backbone_checkpoint=None),
                         device=device)


def train_cternet(config: CTERNetConfig, recipe: TrainingRecipe, train: LabelledImages,
                  val: LabelledImages, work_dir: Path,
                  runtime: Runtime = Runtime()) -> TrainingOutcome:
    """Train (or resume training) and return the history; `best.pt` holds the selected model."""
    _check_sizes(recipe, train, val, runtime)
    with intra_op_threads(runtime.cpu_threads):
        return _train(config, recipe, train, val, work_dir, runtime)


def _start(model: CTERNet, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler, checkpoint: dict[str, Any] | None,
           recipe: TrainingRecipe, runtime: Runtime) -> ResumeState:
    """Fresh state, or every state of the checkpoint restored (RNG included)."""
    if checkpoint is None:
        torch.manual_seed(_noise_seed(recipe.seed, runtime.rank))
        return ResumeState(epoch=0, history=[], best_epoch=0, best_val_accuracy=-1.0,
                           weights_source=model.backbone.weights_source)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    restore_rng(checkpoint["rng"][runtime.rank])
    resume = resume_state(checkpoint)
    if runtime.is_main:
        logger.info("cternet training: resuming after epoch %d of %d", resume.epoch, recipe.epochs)
    return resume


def _wrap(model: CTERNet, device: torch.device, runtime: Runtime) -> nn.Module:
    """DistributedDataParallel across processes; the model itself in a single process."""
    if runtime.world_size == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _train(config: CTERNetConfig, recipe: TrainingRecipe, train: LabelledImages,
           val: LabelledImages, work_dir: Path, runtime: Runtime) -> TrainingOutcome:
    device = resolve_device(runtime.device)
    signature = training_signature(config, recipe, train, val, runtime.world_size)
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = load_last(work_dir, signature)
    model = _build(config, recipe, device, checkpoint)
    fast = FastStep(runtime.speed, device, model)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, **fast.optimizer_options())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=recipe.step_size,
                                                gamma=recipe.lr_decay)
    resume = _start(model, optimizer, scheduler, checkpoint, recipe, runtime)
    resumed_from = resume.epoch
    trained = fast.compiled(_wrap(model, device, runtime))
    train_loader = _train_loader(train, recipe, config, runtime, device)
    val_loader = _val_loader(val, recipe, config, runtime, device)
    images_per_epoch = len(train_loader) * recipe.batch_size * runtime.world_size
    progress = (Progress("cternet_train", total=(recipe.epochs - resume.epoch) * images_per_epoch,
                         unit="images", interval=10.0) if runtime.is_main else None)

    for epoch in range(resume.epoch + 1, recipe.epochs + 1):
        _restore_cache(train, runtime, config)
        train_loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        train_loss, train_accuracy, seen = _train_epoch(trained, train_loader, optimizer, device,
                                                        runtime, progress, fast)
        seconds = time.perf_counter() - start
        _share_buffers(model, runtime)
        val_accuracy = evaluate_accuracy(model, val_loader, device, runtime, fast)
        scheduler.step()
        stats = EpochStats(epoch, train_loss, train_accuracy, val_accuracy, lr, seen / seconds,
                           seconds)
        resume.history.append(dataclasses.asdict(stats))
        resume.epoch = epoch
        improved = val_accuracy > resume.best_val_accuracy
        if improved:
            resume.best_epoch, resume.best_val_accuracy = epoch, val_accuracy
        rng_states = _gather_rng_states(runtime)
        if runtime.is_main:
            # best.pt before last.pt: a crash in between reruns this epoch, which rewrites both.
            if improved:
                save_best(work_dir, signature, model, epoch, val_accuracy)
            save_last(work_dir, signature, model, optimizer, scheduler, rng_states, resume)
            logger.info("cternet epoch %d/%d: loss %.4f, train acc %.3f, val acc %.3f%s, lr %.3g, "
                        "%.1f images/s", epoch, recipe.epochs, train_loss, train_accuracy,
                        val_accuracy, " (best)" if improved else "", lr, stats.images_per_second)
        if runtime.world_size > 1:
            dist.barrier()
    if progress is not None:
        progress.close()
    outcome = TrainingOutcome([EpochStats(**row) for row in resume.history], resume.best_epoch,
                              resume.best_val_accuracy, resumed_from, resume.weights_source,
                              signature)
    if runtime.is_main:
        write_outcome(work_dir, outcome)
    return outcome


def write_outcome(work_dir: Path, outcome: TrainingOutcome) -> None:
    write_json(work_dir / OUTCOME_FILE, dataclasses.asdict(outcome))


def read_outcome(work_dir: Path) -> TrainingOutcome:
    """The outcome a (possibly separate, e.g. torchrun) training process left in `work_dir`."""
    record = json.loads((work_dir / OUTCOME_FILE).read_text(encoding="utf-8"))
    record["history"] = [EpochStats(**row) for row in record["history"]]
    return TrainingOutcome(**record)


def best_model_state(work_dir: Path, outcome: TrainingOutcome) -> dict[str, torch.Tensor]:
    """The selected epoch's weights, checked to be the epoch the outcome names."""
    epoch, state = load_best_model_state(work_dir, outcome.signature)
    if epoch != outcome.best_epoch:
        raise RuntimeError(f"{work_dir / BEST_CHECKPOINT} holds epoch {epoch}, but epoch "
                           f"{outcome.best_epoch} was selected; rerun the training to rewrite it")
    return state
