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
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from affectflow.core.atomic import write_parquet, write_text
from affectflow.core.columns import column_vectors, vector_column
from affectflow.core.errors import UserError
from affectflow.core.stage import ShardOutput, Stage, StageContext, TableRef
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, SOURCE_ID, StageArtifact, make_rejects, shard_name
from affectflow.models.encoder_runtime import inference_context, resolve_device
from affectflow.models.pacl.augment import ViewConfig, eval_views, load_size, load_square
from affectflow.models.pacl.checkpoint import load_model
from affectflow.models.pacl.model import PaclModel
from affectflow.stages.batching import prefetched_image_batches
from affectflow.stages.ingest.stage import IMAGE_PATH, LABEL, LABEL_ID, SPLIT, TEST, TRAIN, VAL, IngestParams
from affectflow.stages.metrics import draw_confusions
from affectflow.stages.pacl.outputs import INITIAL_MODEL_FILE, MODEL_FILE
from affectflow.stages.probe.evaluate import (
    Evaluated,
    ProbeSet,
    finetune_evaluation,
    linear_evaluation,
    split_counts,
    zero_shot_evaluation,
)
from affectflow.stages.probe.params import ProbeParams
from affectflow.stages.probe.report import ENCODERS, results_markdown, results_table
from affectflow.stages.probe.zeroshot import prompt_features

FEATURES = "features"
PREDICTIONS = "predictions"
RESULTS_FILE = "results.md"
CONFUSION_DIR = "confusion"
MODEL_FILES = {"before": INITIAL_MODEL_FILE, "after": MODEL_FILE}

PREDICTED = "predicted"
SCHEMA = pa.schema([(SAMPLE_ID, pa.string()), (SPLIT, pa.string()), (LABEL, pa.string()),
                    (LABEL_ID, pa.int32())])
PREDICTIONS_SCHEMA = pa.schema([(SAMPLE_ID, pa.string()), ("evaluation", pa.string()),
                                ("encoder", pa.string()), (LABEL, pa.string()),
                                (PREDICTED, pa.string())])
_INGEST_COLUMNS = [SAMPLE_ID, SOURCE_ID, IMAGE_PATH, LABEL, LABEL_ID, SPLIT]


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


class ProbeStage(Stage[ProbeParams]):
    name = "probe"
    inputs = ("pacl", "probe_ingest")
    reads = (TableRef("probe_ingest", tuple(_INGEST_COLUMNS)),)
    Params = ProbeParams
    schema = SCHEMA
    side_schemas: ClassVar[dict[str, pa.Schema]] = {FEATURES: pa.schema([(SAMPLE_ID, pa.string()),
                                         *[(encoder, pa.list_(pa.float32())) for encoder in ENCODERS]]),
                    PREDICTIONS: PREDICTIONS_SCHEMA}

    def prepare(self, ctx: StageContext[ProbeParams]) -> list[int]:
        return ctx.input("probe_ingest").shard_ids()

    def setup(self, ctx: StageContext[ProbeParams]) -> Encoders:
        return load_encoders(ctx.input("pacl"), ctx.params.device)

    def process(self, ctx: StageContext[ProbeParams], state: Encoders,
                shard_id: int) -> ShardOutput:
        """Backbone features of every labelled image under both encoders (centre view)."""
        params = ctx.params
        rows = ctx.input("probe_ingest").read_shard(shard_id, _INGEST_COLUMNS).to_pylist()
        rejected = [{**row, "reason": "no_label", "detail": "the labelled set has no label for it"}
                    for row in rows if row[LABEL_ID] is None]
        labelled = [row for row in rows if row[LABEL_ID] is not None]
        loaded: list[dict[str, Any]] = []
        features: dict[str, list[np.ndarray]] = {encoder: [] for encoder in ENCODERS}
        side = load_size(state.view.image_size)
        for batch in prefetched_image_batches([row[IMAGE_PATH] for row in labelled],
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
        ids = pa.array([row[SAMPLE_ID] for row in loaded], pa.string())
        main = pa.table({SAMPLE_ID: ids, SPLIT: [row[SPLIT] for row in loaded],
                         LABEL: [row[LABEL] for row in loaded],
                         LABEL_ID: pa.array([row[LABEL_ID] for row in loaded], pa.int32())},
                        schema=SCHEMA)
        width = state.models["after"].image_projection.in_features
        side_table = pa.table({SAMPLE_ID: ids, **{
            encoder: vector_column(np.concatenate(chunks) if chunks else np.zeros((0, width)),
                                   dtype=np.float32)
            for encoder, chunks in features.items()}})
        return ShardOutput(rows_in=len(rows), tables={MAIN_TABLE: main, FEATURES: side_table},
                           rejects=make_rejects(rejected))

    def finalize(self, ctx: StageContext[ProbeParams]) -> dict[str, Any]:
        params = ctx.params
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

    def _probe_set(self, ctx: StageContext[ProbeParams]) -> ProbeSet:
        """Kept rows with class indices, image paths and both encoders' features."""
        output = StageArtifact(ctx.output_dir)
        rows = output.read_all().sort_by(SAMPLE_ID)
        features = output.read_all(table=FEATURES).sort_by(SAMPLE_ID)
        splits = np.asarray(rows[SPLIT].to_pylist())
        for split in (TRAIN, VAL, TEST):
            if not (splits == split).any():
                raise UserError(f"the labelled set has no '{split}' rows; the probe trains on "
                                "train, selects on val and reports on test",
                                hint="give probe_ingest split files or split_ratios with all three > 0")
        label_ids = rows[LABEL_ID].to_numpy()
        classes = sorted(set(label_ids.tolist()))
        names = dict(zip(label_ids.tolist(), rows[LABEL].to_pylist()))
        index_of = {label_id: index for index, label_id in enumerate(classes)}
        ingest = ctx.input("probe_ingest").read_all([SAMPLE_ID, IMAGE_PATH])
        path_of = dict(zip(ingest[SAMPLE_ID].to_pylist(), ingest[IMAGE_PATH].to_pylist()))
        ids = rows[SAMPLE_ID].to_pylist()
        return ProbeSet(sample_ids=np.asarray(ids), splits=splits,
                        labels=np.asarray([index_of[label_id] for label_id in label_ids.tolist()]),
                        paths=[path_of[sample_id] for sample_id in ids],
                        features={encoder: column_vectors(features[encoder]) for encoder in ENCODERS},
                        class_names=[names[label_id] for label_id in classes])

    def _write_results(self, ctx: StageContext[ProbeParams], data: ProbeSet,
                       evaluated: dict[str, dict[str, Evaluated]],
                       encoders: Encoders) -> dict[str, Any]:
        """Predictions table, one before/after confusion picture per evaluation, results.md and
        the summary."""
        test = data.mask(TEST)
        prediction_tables, figures = [], []
        for evaluation, by_encoder in evaluated.items():
            for encoder, outcome in by_encoder.items():
                prediction_tables.append(pa.table({
                    SAMPLE_ID: data.sample_ids[test].tolist(),
                    "evaluation": [evaluation] * int(test.sum()),
                    "encoder": [encoder] * int(test.sum()),
                    LABEL: [data.class_names[i] for i in data.labels[test]],
                    PREDICTED: [data.class_names[i] for i in outcome.test_predictions]},
                    schema=PREDICTIONS_SCHEMA))
            figure = f"{CONFUSION_DIR}/{evaluation}.png"
            draw_confusions(ctx.output_dir / figure, [
                (f"{evaluation}, {encoder} PACL: accuracy "
                 f"{100 * outcome.result.metrics.accuracy:.1f}%", outcome.result.metrics.confusion)
                for encoder, outcome in by_encoder.items()], data.class_names)
            figures.append(figure)
        write_parquet(ctx.output_dir / PREDICTIONS / shard_name(0), pa.concat_tables(prediction_tables))
        results = {evaluation: {encoder: outcome.result for encoder, outcome in by_encoder.items()}
                   for evaluation, by_encoder in evaluated.items()}
        labelled = IngestParams.model_construct(**ctx.input("probe_ingest").manifest["params"])
        dataset = labelled.dataset_name or "probe_ingest"
        write_text(ctx.output_dir / RESULTS_FILE, results_markdown(
            results, data.class_names, dataset, encoders.config["visual_encoder"], int(test.sum())))
        return {"table": results_table(results),
                "details": {evaluation: {encoder: result.to_dict()
                                         for encoder, result in by_encoder.items()}
                            for evaluation, by_encoder in results.items()},
                "classes": data.class_names, "splits": split_counts(data),
                "files": [RESULTS_FILE, *figures]}
