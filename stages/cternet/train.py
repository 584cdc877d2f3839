"""`cternet_train`: train CTERNet on the ingest's train split, select the epoch on its val split.

Shards check the training rows (label known) and decode their images into the pixel cache
(which checks the bytes are still the ones ingest validated), then write them as the main
table with the class each is trained on (`target`: the label, or its polarity under `task:
polarity`): that table is exactly what training reads, and every row that cannot be used is a
reject with a reason. Test rows are not this stage's input: it never opens them (their count is
in the summary), so nothing about the test split can leak into training or model selection.

`finalize` trains once all shards are checked, in this process or on `processes` torchrun
processes per node (`nnodes` nodes), with checkpoints in the stage's work folder: an interrupted
run resumes from the latest epoch. It writes the selected model (`model.pt` + `config.json`),
the `history` side table and `training_curves.png`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from affectflow.core.atomic import write_json, write_parquet
from affectflow.core.errors import UserError
from affectflow.core.hashing import tree_fingerprint
from affectflow.core.stage import ShardOutput, Stage, StageContext, StageParams, TableRef
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, SOURCE_ID, StageArtifact, make_rejects
from affectflow.core.torchrun import TorchrunNodes, runs_in_process
from affectflow.models.cternet.config import (
    Branches,
    ChannelAttentionKind,
    Counterfactual,
    CTERNetConfig,
    EvalCrop,
    Head,
    Mode,
    Precision,
    SentimentMap,
)
from affectflow.stages.cternet.polarity import POLARITY_CLASSES, NoPolarity, PolarityMap, Task, target_class
from affectflow.stages.ingest.stage import IMAGE_PATH, IMAGE_SHA256, LABEL, SPLIT, TEST, TRAIN, VAL
from affectflow.stages.param_types import Device, TimmModel

if TYPE_CHECKING:
    from affectflow.models.cternet.data import LabelledImages
    from affectflow.models.cternet.train import TrainingOutcome, TrainingRecipe

HISTORY = "history"
CURVES_FIGURE = "training_curves.png"
CLASSES_FILE = "classes.json"
TRAINING_SPLITS = (TRAIN, VAL)
TARGET = "target"
CLASS_INDEX = "class_index"

SCHEMA = pa.schema([
    (SAMPLE_ID, pa.string()),
    (SPLIT, pa.string()),
    (LABEL, pa.string()),
    (TARGET, pa.string()),
    (CLASS_INDEX, pa.int32()),
])
HISTORY_SCHEMA = pa.schema([
    ("epoch", pa.int32()),
    ("train_loss", pa.float64()),
    ("train_accuracy", pa.float64()),
    ("val_accuracy", pa.float64()),
    ("lr", pa.float64()),
    ("images_per_second", pa.float64()),
    ("seconds", pa.float64()),
])
_INGEST_COLUMNS = [SAMPLE_ID, SOURCE_ID, IMAGE_PATH, LABEL, SPLIT, IMAGE_SHA256]


class CTERNetTrainParams(StageParams, TorchrunNodes):
    """The CTERNet architecture (as CTERNetConfig), the paper's training recipe, and where it
    trains: `processes` per node and the torchrun node fields (`nnodes`, `rdzv_endpoint`, ...)."""

    backbone: TimmModel = "res2net101d"
    pretrained: bool = Field(True, description="timm hub weights (the preflight stops if they are "
                             "not cached offline)")
    backbone_checkpoint: Path | None = Field(
        None, description="state dict of the same timm architecture, e.g. PACL's backbone.pt")
    classes: list[str] | None = Field(
        None, description="class names in output order; default: sorted labels of the train split")
    num_classes: int | None = Field(None, description="default: the number of classes")
    k_maps: int = 4
    counterfactual: Counterfactual = "random"
    mode: Mode = "full"
    detection_weight: float = 1.0
    effect_weight: float = 1.0
    input_size: int = 448
    attention_channels: int = 32
    branch_channels: int = 16
    sentiment_map: SentimentMap = Field(
        "raw_sum", description="raw_sum (Eq. 4), raw_mean (public code), softmax_mean")
    head: Head = Field("features", description="features: concat(S, X) (Eq. 5); attended: "
                       "concat(S, S * reduce(X)) (Fig. 2, public code)")
    branches: Branches = Field("psa", description="psa: grouped 3/5/7/9 convs (groups 1/4/8/16); "
                               "conv_bn_relu: ungrouped conv + BN + ReLU")
    channel_attention: ChannelAttentionKind = Field(
        "paper", description="paper: softmax(X X^T) (Eq. 2); danet: softmax(max(E) - E)")
    precision: Precision = Field("fp32", description="fp32, or bf16 autocast (any device)")
    eval_crop: EvalCrop = Field("shorter_side", description="shorter_side: resize the shorter "
                                "side to input_size (public code); imagenet: to input_size/0.875")
    task: Task = Field("emotion", description="emotion: the labels; polarity: a 2-class model "
                       "on the labels' polarity (paper Table 2)")
    polarity_map: PolarityMap | None = Field(
        None, description="the labels' polarities (stages/cternet/polarity.py); needed by task "
        "polarity, adds the grouped polarity figure to task emotion")
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=2, description="per process; BatchNorm needs at least 2")
    lr: float = Field(1e-4, gt=0, description="paper: 1e-4")
    momentum: float = Field(0.9, ge=0, lt=1)
    step_size: int = Field(10, ge=1, description="lr x lr_decay every step_size epochs (paper 10)")
    lr_decay: float = Field(0.1, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="random resized crop area")
    seed: int = 0
    device: Device = None
    processes: int = Field(1, ge=1, description="data-parallel processes on this node; > 1 "
                           "(or nnodes > 1) trains through torchrun")
    cpu_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")

    @field_validator("backbone_checkpoint")
    @classmethod
    def _checkpoint_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value} (give the backbone.pt a PACL run wrote, "
                             "or remove the key to use the hub / random weights)")
        return value

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (len(value) < 2 or len(set(value)) != len(value)):
            raise ValueError(f"need at least 2 distinct class names, got {value}")
        return value

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"crop_scale {list(value)} must satisfy 0 < low <= high <= 1 "
                             "(e.g. [0.08, 1.0])")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CTERNetTrainParams:
        if self.task == "polarity":
            if self.polarity_map is None:
                raise ValueError("task polarity needs polarity_map: fi, emotion6, artphoto or "
                                 "twitter2 (the dataset whose labels are mapped)")
            if self.classes is not None or self.num_classes not in (None, 2):
                raise ValueError(f"task polarity trains the classes {list(POLARITY_CLASSES)}; "
                                 "remove classes and num_classes")
        if self.classes is not None and self.num_classes not in (None, len(self.classes)):
            raise ValueError(f"num_classes {self.num_classes} differs from the {len(self.classes)} "
                             "names in classes; remove num_classes")
        self.model_config_for(self.num_classes or len(self.classes or ()) or 2)
        if self.processes > 1:
            self._check_gpus_for_processes()
        return self

    def _check_gpus_for_processes(self) -> None:
        import torch

        gpus = torch.cuda.device_count()
        on_gpus = self.device != "cpu" and (self.device is not None or gpus > 0)
        if on_gpus and gpus < self.processes:
            raise ValueError(f"processes {self.processes} needs one GPU each, {gpus} visible; "
                             "lower processes or set device: cpu")

    @property
    def loads_pretrained_weights(self) -> bool:
        """Whether timm's hub weights are loaded: a backbone_checkpoint replaces them."""
        return self.pretrained and self.backbone_checkpoint is None

    def model_config_for(self, num_classes: int) -> CTERNetConfig:
        """The CTERNetConfig these params describe; its checks name the offending key."""
        return CTERNetConfig(
            backbone=self.backbone, pretrained=self.pretrained,
            backbone_checkpoint=self.backbone_checkpoint, num_classes=num_classes,
            k_maps=self.k_maps, counterfactual=self.counterfactual, mode=self.mode,
            detection_weight=self.detection_weight, effect_weight=self.effect_weight,
            input_size=self.input_size, attention_channels=self.attention_channels,
            branch_channels=self.branch_channels, sentiment_map=self.sentiment_map,
            head=self.head, branches=self.branches, channel_attention=self.channel_attention,
            precision=self.precision, eval_crop=self.eval_crop)

    def recipe(self) -> TrainingRecipe:
        from affectflow.models.cternet.train import TrainingRecipe

        return TrainingRecipe(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                              momentum=self.momentum, step_size=self.step_size,
                              lr_decay=self.lr_decay, weight_decay=self.weight_decay,
                              crop_scale=self.crop_scale, seed=self.seed)


def resolve_classes(params: CTERNetTrainParams, labels: pa.Table) -> list[str]:
    """negative, positive under task polarity; else the configured classes, or the sorted labels
    of the train split (val/test never decide)."""
    if params.task == "polarity":
        return list(POLARITY_CLASSES)
    if params.classes is not None:
        return list(params.classes)
    train = labels.filter(pc.equal(labels[SPLIT], TRAIN))[LABEL].drop_null()
    classes = sorted(set(train.to_pylist()))
    if len(classes) < 2:
        raise UserError(f"the train split has {len(classes)} labelled class(es); CTERNet needs 2+",
                        hint="check ingest.path and the dataset's labels")
    if params.num_classes is not None and params.num_classes != len(classes):
        raise UserError(f"cternet_train.num_classes is {params.num_classes} but the train split "
                        f"has {len(classes)} labels: {classes}",
                        hint="remove num_classes, or list cternet_train.classes explicitly")
    return classes


@dataclass(frozen=True)
class Targets:
    """What a labelled row is trained and scored on (training and evaluation alike): the task,
    its polarity map and the model's classes with their output indices."""

    task: Task
    polarity_map: str | None
    class_index: dict[str, int]

    def target(self, label: str | None) -> tuple[str, str] | str:
        """The row's class (its label, or the label's polarity), else (reason, detail)."""
        if label is None:
            return "missing_label", "labelled rows are needed for training and evaluation"
        try:
            target = target_class(self.task, self.polarity_map, label)
        except NoPolarity as problem:
            return problem.reason, str(problem)
        if target not in self.class_index:
            return "label_not_in_classes", (f"label {label!r} not in the model's classes "
                                            f"{list(self.class_index)}")
        return target


def _check_row(row: dict[str, Any], targets: Targets) -> tuple[str, str] | str:
    """The target class of a training row whose labels can be used, else (reason, detail); its
    image is checked when it is decoded into the pixel cache."""
    if row[SPLIT] not in TRAINING_SPLITS:
        return "unknown_split", f"split {row[SPLIT]!r} is none of train, val, test"
    return targets.target(row[LABEL])


class CTERNetTrainStage(Stage[CTERNetTrainParams]):
    name = "cternet_train"
    uses_accelerator = True
    inputs = ("ingest",)
    reads = (TableRef("ingest", tuple(_INGEST_COLUMNS)),)
    Params = CTERNetTrainParams
    schema = SCHEMA
    side_schemas: ClassVar[dict[str, pa.Schema]] = {HISTORY: HISTORY_SCHEMA}

    def source_fingerprint(self, params: CTERNetTrainParams, settings: Any) -> str | None:
        return tree_fingerprint(params.backbone_checkpoint) if params.backbone_checkpoint else None

    def prepare(self, ctx: StageContext[CTERNetTrainParams]) -> list[int]:
        """Fix the class list from the train split before any shard is checked."""
        params = ctx.params
        ingest = ctx.input("ingest")
        classes = resolve_classes(params, ingest.read_all(columns=[LABEL, SPLIT]))
        write_json(ctx.work_dir / CLASSES_FILE, classes)
        return ingest.shard_ids()

    def setup(self, ctx: StageContext[CTERNetTrainParams]) -> Targets:
        classes = json.loads((ctx.work_dir / CLASSES_FILE).read_text(encoding="utf-8"))
        return Targets(ctx.params.task, ctx.params.polarity_map,
                       {name: index for index, name in enumerate(classes)})

    def process(self, ctx: StageContext[CTERNetTrainParams], state: Targets,
                shard_id: int) -> ShardOutput:
        from affectflow.core.loading import PixelRequest, failure_reason, fill_cache
        from affectflow.models.cternet.data import cached_pixels
        from affectflow.models.encoder_runtime import resolve_device
        from affectflow.stages.batching import loader_settings

        table = ctx.input("ingest").read_shard(shard_id, columns=_INGEST_COLUMNS)
        rows = [row for row in table.to_pylist() if row[SPLIT] != TEST]
        checks = [_check_row(row, state) for row in rows]
        usable = [index for index, check in enumerate(checks) if isinstance(check, str)]
        device = resolve_device(ctx.params.device)
        loading = loader_settings(ctx.settings, device)
        pixels = cached_pixels(ctx.params.model_config_for(len(state.class_index)), loading.decoder)
        failures = fill_cache([PixelRequest(rows[i][IMAGE_PATH], rows[i][IMAGE_SHA256]) for i in usable],
                              loading.cache.store(pixels), loading.workers,
                              decode_device=device if pixels.decoder == "torchvision" else None)
        for position, error in failures.items():
            checks[usable[position]] = (failure_reason(error), error)
        kept = [{SAMPLE_ID: row[SAMPLE_ID], SPLIT: row[SPLIT], LABEL: row[LABEL],
                 TARGET: check, CLASS_INDEX: state.class_index[check]}
                for row, check in zip(rows, checks) if isinstance(check, str)]
        rejects = [{SAMPLE_ID: row[SAMPLE_ID], SOURCE_ID: row[SOURCE_ID],
                    "reason": check[0], "detail": check[1]}
                   for row, check in zip(rows, checks) if not isinstance(check, str)]
        return ShardOutput(rows_in=len(rows),
                           tables={MAIN_TABLE: pa.Table.from_pylist(kept, schema=SCHEMA)},
                           rejects=make_rejects(rejects))

    def finalize(self, ctx: StageContext[CTERNetTrainParams]) -> dict[str, Any]:
        """Train (resuming from the latest checkpoint), then export the selected epoch."""
        from affectflow.models.cternet.classifier import save_classifier
        from affectflow.models.cternet.train import best_model_state
        from affectflow.stages.cternet.figures import draw_training_curves

        params = ctx.params
        classes = json.loads((ctx.work_dir / CLASSES_FILE).read_text(encoding="utf-8"))
        config = params.model_config_for(len(classes))
        train, val = _training_images(ctx)
        _require_enough(train, val, params)
        outcome = self._train(ctx, params, config, train, val)
        save_classifier(ctx.output_dir, best_model_state(ctx.work_dir, outcome), config, classes,
                        {"best_epoch": outcome.best_epoch,
                         "best_val_accuracy": outcome.best_val_accuracy,
                         "weights_source": outcome.weights_source, "task": params.task,
                         "polarity_map": params.polarity_map})
        write_parquet(StageArtifact(ctx.output_dir).shard_path(0, HISTORY), pa.Table.from_pylist(
            [dataclasses.asdict(row) for row in outcome.history], schema=HISTORY_SCHEMA))
        draw_training_curves(outcome.history, outcome.best_epoch, ctx.output_dir / CURVES_FIGURE)
        speeds = [row.images_per_second for row in outcome.history]
        splits = ctx.input("ingest").read_all(columns=[SPLIT])[SPLIT]
        return {
            "classes": classes, "task": params.task, "polarity_map": params.polarity_map,
            "backbone": params.backbone, "mode": params.mode, "head": params.head,
            "sentiment_map": params.sentiment_map, "precision": params.precision,
            "eval_crop": params.eval_crop,
            "input_size": params.input_size, "weights_source": outcome.weights_source,
            "epochs": params.epochs, "best_epoch": outcome.best_epoch,
            "best_val_accuracy": outcome.best_val_accuracy,
            "final_train_accuracy": outcome.history[-1].train_accuracy,
            "train_images": len(train), "val_images": len(val),
            "test_rows_not_read": pc.sum(pc.equal(splits, TEST)).as_py() or 0,
            "resumed_from_epoch": outcome.resumed_from_epoch,
            "images_per_second": sum(speeds) / len(speeds), "processes": params.processes,
            "nnodes": params.nnodes,
            "figures": [CURVES_FIGURE],
        }

    def _train(self, ctx: StageContext[CTERNetTrainParams], params: CTERNetTrainParams, config: CTERNetConfig,
               train: LabelledImages, val: LabelledImages) -> TrainingOutcome:
        """In this process, or on `processes` torchrun processes per node that share the work
        folder (on a shared filesystem when there are several nodes)."""
        from affectflow.models.cternet.distributed import JOB_FILE, TrainingJob, launch, write_job
        from affectflow.models.cternet.train import Runtime, read_outcome, train_cternet
        from affectflow.models.encoder_runtime import resolve_device
        from affectflow.models.step_speed import StepSpeed
        from affectflow.stages.batching import loader_settings

        device = resolve_device(params.device)
        # Loader processes pay off feeding a GPU; on a CPU they would compete with the model.
        loader_workers = ctx.settings.workers if device.type == "cuda" else 0
        loading = loader_settings(ctx.settings, device)
        speed = StepSpeed(compile=ctx.settings.torch_compile)
        if runs_in_process(params.processes, params):
            return train_cternet(config, params.recipe(), train, val, ctx.work_dir,
                                 Runtime(device=params.device, loader_workers=loader_workers,
                                         cpu_threads=params.cpu_threads, cache=loading.cache,
                                         decoder=loading.decoder, speed=speed))
        job_file = ctx.work_dir / JOB_FILE
        write_job(job_file, TrainingJob(config, params.recipe(), train, val, ctx.work_dir,
                                        params.device, loader_workers, params.cpu_threads,
                                        loading.cache, loading.decoder, speed))
        launch(job_file, params.processes, nodes=params)
        return read_outcome(ctx.work_dir)


def _require_enough(train: LabelledImages, val: LabelledImages,
                    params: CTERNetTrainParams) -> None:
    """Fail with the fix before training: a full batch per process, and val to select on."""
    world_size = params.processes * params.nnodes
    if len(train) < params.batch_size * world_size:
        raise UserError(f"cternet_train has {len(train)} usable train images, fewer than one "
                        f"batch of {params.batch_size} per process x {world_size} process(es)",
                        hint="lower cternet_train.batch_size, or see the stage's rejects")
    if len(val) == 0:
        raise UserError("cternet_train has no usable val images; the best epoch is selected "
                        "on them", hint="give ingest.split_ratios a val share, or see the rejects")


def _training_images(ctx: StageContext[CTERNetTrainParams]
                     ) -> tuple[LabelledImages, LabelledImages]:
    """The kept rows of each training split with their image paths, in table order."""
    from affectflow.models.cternet.data import LabelledImages

    rows = StageArtifact(ctx.output_dir).read_all(columns=[SAMPLE_ID, SPLIT, CLASS_INDEX])
    files = ctx.input("ingest").read_all(columns=[SAMPLE_ID, IMAGE_PATH, IMAGE_SHA256])
    file_of = {sample_id: (path, sha) for sample_id, path, sha in zip(
        files[SAMPLE_ID].to_pylist(), files[IMAGE_PATH].to_pylist(), files[IMAGE_SHA256].to_pylist())}
    images = {}
    for split in TRAINING_SPLITS:
        part = rows.filter(pc.equal(rows[SPLIT], split))
        chosen = [file_of[sample_id] for sample_id in part[SAMPLE_ID].to_pylist()]
        images[split] = LabelledImages(tuple(path for path, _ in chosen),
                                       tuple(part[CLASS_INDEX].to_pylist()),
                                       tuple(sha for _, sha in chosen))
    return images[TRAIN], images[VAL]
