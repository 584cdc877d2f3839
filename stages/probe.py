"""`probe`: downstream evaluation of the encoder BEFORE and AFTER PACL on a labelled data set.

Inputs: `pacl` (its `initial_model.pt` = the weights PACL started from, and `model.pt`) and
`probe_ingest` (a labelled data set with train/val/test splits, e.g. FI). Shards extract the
frozen backbone features of both encoders once (side table `features`); `finalize` runs the
configured evaluations (linear probe, fine-tuning, zero-shot) for both encoders — train on
train, select on val, report on test — and writes the before/after table (`results.md` and the
summary), confusion matrices (`confusion/`) and the test predictions (side table
`predictions`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from affectflow.core.atomic import write_parquet, write_text
from affectflow.core.errors import UserError
from affectflow.core.stage import ShardOutput, Stage, StageContext
from affectflow.core.store import MAIN_TABLE, StageArtifact, make_rejects, shard_name
from affectflow.models.encoder_runtime import inference_context, resolve_device
from affectflow.models.pacl import PaclModel
from affectflow.models.pacl_train_augment import ViewConfig, eval_views, load_size, load_square
from affectflow.models.pacl_train_checkpoint import load_model
from affectflow.models import pacl_train_augment, pacl_train_checkpoint
from affectflow.stages import (pacl_images, probe_evaluate, probe_finetune, probe_linear,
                               probe_metrics, probe_params, probe_report, probe_zeroshot)
from affectflow.stages.batching import prefetched_image_batches
from affectflow.stages.factual import column_vectors
from affectflow.stages.pacl_outputs import INITIAL_MODEL_FILE, MODEL_FILE
from affectflow.stages.probe_evaluate import (Evaluated, ProbeSet, finetune_evaluation,
                                              linear_evaluation, split_counts,
                                              zero_shot_evaluation)
from affectflow.stages.probe_metrics import draw_confusion
from affectflow.stages.probe_params import ProbeParams
from affectflow.stages.probe_report import ENCODERS, results_markdown, results_table
from affectflow.stages.probe_zeroshot import prompt_features

FEATURES = "features"
PREDICTIONS = "predictions"
RESULTS_FILE = "results.md"
CONFUSION_DIR = "confusion"
MODEL_FILES = {"before": INITIAL_MODEL_FILE, "after": MODEL_FILE}

SCHEMA = pa.schema([("sample_id", pa.string()), ("split", pa.string()), ("label", pa.string()),
                    ("label_id", pa.int32())])
PREDICTIONS_SCHEMA = pa.schema([("sample_id", pa.string()), ("evaluation", pa.string()),
                                ("encoder", pa.string()), ("label", pa.string()),
                                ("predicted", pa.string())])


@dataclass
class Encoders:
    """The before/after PACL models, their image view and the device they run on."""

    models: dict[str, PaclModel]
    config: dict[str, Any]
    view: ViewConfig
    device: torch.device


def load_encoders(pacl: StageArtifact, device: str | None) -> Encoders:
    """Both PACL model files of a finished pacl stage, on the device, in eval mode."""
    resolved = resolve_device(device)
    models, config = {}, {}
    for encoder, file in MODEL_FILES.items():
        model, config = load_model(pacl.path / file)
        models[encoder] = model.to(resolved).eval()
    view = ViewConfig(int(config["image_size"]), tuple(config["mean"]), tuple(config["std"]))
    return Encoders(models, config, view, resolved)


def _vectors(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float32).reshape(-1)),
                                             values.shape[1])


class ProbeStage(Stage):
    name = "probe"
    inputs = ("pacl", "probe_ingest")
    Params = ProbeParams
    schema = SCHEMA
    side_schemas = {FEATURES: pa.schema([("sample_id", pa.string()),
                                         *[(encoder, pa.list_(pa.float32())) for encoder in ENCODERS]]),
                    PREDICTIONS: PREDICTIONS_SCHEMA}

    code_modules = (probe_evaluate, probe_finetune, probe_linear, probe_metrics, probe_params,
                    probe_report, probe_zeroshot, pacl_images, pacl_train_augment,
                    pacl_train_checkpoint)

    def prepare(self, ctx: StageContext) -> list[int]:
        return ctx.input("probe_ingest").shard_ids()

    def setup(self, ctx: StageContext) -> Encoders:
        params: ProbeParams = ctx.params  # type: ignore[assignment]
        return load_encoders(ctx.input("pacl"), params.device)

    def process(self, ctx: StageContext, state: Encoders, shard_id: int) -> ShardOutput:
        """Backbone features of every labelled image under both encoders (centre view)."""
        params: ProbeParams = ctx.params  # type: ignore[assignment]
        rows = ctx.input("probe_ingest").read_shard(
            shard_id, ["sample_id", "source_id", "image_path", "label", "label_id", "split"]).to_pylist()
        rejected = [{**row, "reason": "no_label", "detail": "the labelled set has no label for it"}
                    for row in rows if row["label_id"] is None]
        labelled = [row for row in rows if row["label_id"] is not None]
        loaded, features = [], {encoder: [] for encoder in ENCODERS}
        side = load_size(state.view.image_size)
        for batch in prefetched_image_batches([row["image_path"] for row in labelled],
                                              params.batch_size, partial(load_square, side=side),
                                              ctx.settings.workers):
            rejected += [{**labelled[index], "reason": "image_load_failed", "detail": error}
                         for index, error in batch.failures]
            if batch.pixels is None:
                continue
            loaded += [labelled[index] for index in batch.indices]
            pixels = eval_views(batch.pixels, state.view).to(state.device)
            with inference_context(state.device):
                for encoder, model in state.models.items():
                    features[encoder].append(model.backbone_features(pixels).float().cpu().numpy())
        ids = pa.array([row["sample_id"] for row in loaded], pa.string())
        main = pa.table({"sample_id": ids, "split": [row["split"] for row in loaded],
                         "label": [row["label"] for row in loaded],
                         "label_id": pa.array([row["label_id"] for row in loaded], pa.int32())},
                        schema=SCHEMA)
        width = state.models["after"].image_projection.in_features
        side_table = pa.table({"sample_id": ids, **{
            encoder: _vectors(np.concatenate(chunks) if chunks else np.zeros((0, width)))
            for encoder, chunks in features.items()}})
        return ShardOutput(rows_in=len(rows), tables={MAIN_TABLE: main, FEATURES: side_table},
                           rejects=make_rejects(rejected))

    def finalize(self, ctx: StageContext) -> dict[str, Any]:
        params: ProbeParams = ctx.params  # type: ignore[assignment]
        data = self._probe_set(ctx)
        encoders = load_encoders(ctx.input("pacl"), params.device)
        run: dict[str, Callable[[str], Evaluated]] = {
            "linear": lambda encoder: linear_evaluation(data, encoder, params.linear_training()),
            "finetune": lambda encoder: finetune_evaluation(
                data, encoders.models[encoder], encoders.view, params.finetune_training(),
                params.finetune_backbone_lr, ctx.settings.workers, encoders.device),
        }
        if "zero_shot" in params.evaluations:
            prompts = prompt_features(encoders.config["text_encoder"], data.class_names,
                                      params.prompts, params.device)
            run["zero_shot"] = lambda encoder: zero_shot_evaluation(
                data, encoder, encoders.models[encoder], prompts)
        evaluated = {evaluation: {encoder: run[evaluation](encoder) for encoder in ENCODERS}
                     for evaluation in params.evaluations}
        return self._write_results(ctx, data, evaluated, encoders)

    def _probe_set(self, ctx: StageContext) -> ProbeSet:
        """Kept rows with class indices, image paths and both encoders' features."""
        output = StageArtifact(ctx.output_dir)
        rows = output.read_all().sort_by("sample_id")
        features = output.read_all(table=FEATURES).sort_by("sample_id")
        splits = np.asarray(rows["split"].to_pylist())
        for split in ("train", "val", "test"):
            if not (splits == split).any():
                raise UserError(f"the labelled set has no '{split}' rows; the probe trains on "
                                "train, selects on val and reports on test",
                                hint="give probe_ingest split files or split_ratios with all three > 0")
        label_ids = rows["label_id"].to_numpy()
        classes = sorted(set(label_ids.tolist()))
        names = dict(zip(label_ids.tolist(), rows["label"].to_pylist()))
        index_of = {label_id: index for index, label_id in enumerate(classes)}
        ingest = ctx.input("probe_ingest").read_all(["sample_id", "image_path"])
        path_of = dict(zip(ingest["sample_id"].to_pylist(), ingest["image_path"].to_pylist()))
        ids = rows["sample_id"].to_pylist()
        return ProbeSet(sample_ids=np.asarray(ids), splits=splits,
                        labels=np.asarray([index_of[label_id] for label_id in label_ids.tolist()]),
                        paths=[path_of[sample_id] for sample_id in ids],
                        features={encoder: column_vectors(features[encoder]) for encoder in ENCODERS},
                        class_names=[names[label_id] for label_id in classes])

    def _write_results(self, ctx: StageContext, data: ProbeSet,
                       evaluated: dict[str, dict[str, Evaluated]], encoders: Encoders) -> dict[str, Any]:
        """Predictions table, confusion pictures, results.md and the summary."""
        test = data.mask("test")
        prediction_tables, figures = [], []
        for evaluation, by_encoder in evaluated.items():
            for encoder, outcome in by_encoder.items():
                prediction_tables.append(pa.table({
                    "sample_id": data.sample_ids[test].tolist(),
                    "evaluation": [evaluation] * int(test.sum()), "encoder": [encoder] * int(test.sum()),
                    "label": [data.class_names[i] for i in data.labels[test]],
                    "predicted": [data.class_names[i] for i in outcome.test_predictions]},
                    schema=PREDICTIONS_SCHEMA))
                figure = f"{CONFUSION_DIR}/{evaluation}_{encoder}.png"
                draw_confusion(ctx.output_dir / figure, outcome.result.metrics.confusion,
                               data.class_names, f"{evaluation}, {encoder} PACL: accuracy "
                               f"{100 * outcome.result.metrics.accuracy:.1f}%")
                figures.append(figure)
        write_parquet(ctx.output_dir / PREDICTIONS / shard_name(0), pa.concat_tables(prediction_tables))
        results = {evaluation: {encoder: outcome.result for encoder, outcome in by_encoder.items()}
                   for evaluation, by_encoder in evaluated.items()}
        dataset = ctx.input("probe_ingest").manifest["params"].get("dataset_name") or "probe_ingest"
        write_text(ctx.output_dir / RESULTS_FILE, results_markdown(
            results, data.class_names, dataset, encoders.config["visual_encoder"], int(test.sum())))
        return {"table": results_table(results),
                "details": {evaluation: {encoder: result.to_dict(data.class_names)
                                         for encoder, result in by_encoder.items()}
                            for evaluation, by_encoder in results.items()},
                "classes": data.class_names, "splits": split_counts(data),
                "files": [RESULTS_FILE, *figures]}
