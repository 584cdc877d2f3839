"""`probe`: downstream evaluation of the encoder BEFORE and AFTER PACL on a labelled data set.

Inputs: a finished pacl stage (this run's `pacl`, or another run's through `probe.pacl_from`, so
one pretraining serves every downstream data set) with its `initial_model.pt` (the weights PACL
started from) and `model.pt`, and `probe_ingest` (a labelled set with train/val/test splits).
Shards extract the frozen backbone features of both encoders once (side table `features`);
`finalize` runs, for every configured task (single-label, multi-label, regression,
hierarchical), the configured evaluations (linear probe, fine-tuning, each zero-shot prompt)
for both encoders — train on train, select on val, report on test — and writes the
before/after tables (`results.md` and the summary), confusion matrices (`confusion/`) and the
test predictions (side table `predictions`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from affectflow.core.atomic import write_parquet, write_text
from affectflow.core.columns import column_vectors, vector_column
from affectflow.core.errors import UserError
from affectflow.core.hashing import hash_value
from affectflow.core.stage import ShardOutput, Stage, StageContext, TableRef
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, SOURCE_ID, StageArtifact, make_rejects, shard_name
from affectflow.stages.ingest.stage import (
    IMAGE_PATH,
    IMAGE_SHA256,
    LABEL,
    LABEL_ID,
    LABEL_SET,
    SPLIT,
    TARGETS,
    TEST,
    TRAIN,
    VAL,
)
from affectflow.stages.pacl.outputs import INITIAL_MODEL_FILE, MODEL_FILE
from affectflow.stages.probe.params import ProbeParams, pacl_params
from affectflow.stages.probe.report import ENCODERS, EVALUATION_TITLES, TaskResults, results_markdown, results_table
from affectflow.stages.probe.tasks import Annotations, ProbeTask, TaskKind, make_task

if TYPE_CHECKING:
    import torch

    from affectflow.models.pacl.augment import ViewConfig
    from affectflow.models.pacl.model import PaclModel
    from affectflow.stages.probe.evaluate import Evaluated, ProbeSet

logger = logging.getLogger(__name__)

FEATURES = "features"
PREDICTIONS = "predictions"
RESULTS_FILE = "results.md"
CONFUSION_DIR = "confusion"
MODEL_FILES = {"before": INITIAL_MODEL_FILE, "after": MODEL_FILE}

PREDICTED = "predicted"
SCHEMA = pa.schema([(SAMPLE_ID, pa.string()), (SPLIT, pa.string()), (LABEL, pa.string()),
                    (LABEL_ID, pa.int32())])
PREDICTIONS_SCHEMA = pa.schema([(SAMPLE_ID, pa.string()), ("task", pa.string()),
                                ("evaluation", pa.string()), ("encoder", pa.string()),
                                ("level", pa.string()), (LABEL, pa.string()),
                                (PREDICTED, pa.string()), ("scores", pa.list_(pa.float32()))])
_INGEST_COLUMNS = [SAMPLE_ID, SOURCE_ID, IMAGE_PATH, IMAGE_SHA256, LABEL, LABEL_ID, LABEL_SET,
                   TARGETS, SPLIT]
# What each task needs a row to carry, and the reject reason when it does not.
TASK_NEEDS: dict[TaskKind, tuple[str, str]] = {
    "single_label": (LABEL_ID, "no_label"), "hierarchical": (LABEL_ID, "no_label"),
    "multi_label": (LABEL_SET, "no_label_set"), "regression": (TARGETS, "no_targets")}
# The probe_ingest setting each task reads its annotation through.
TASK_SETTINGS: dict[TaskKind, tuple[Callable[[Any], bool], str]] = {
    "multi_label": (lambda ingest: "label_set" in ingest.columns,
                    "probe_ingest.columns.label_set (the manifest column of category sets)"),
    "regression": (lambda ingest: bool(ingest.targets),
                   "probe_ingest.targets (the manifest columns of numeric targets)"),
    "hierarchical": (lambda ingest: ingest.hierarchy is not None,
                     "probe_ingest.hierarchy (the label's class tree)"),
}


@dataclass
class Encoders:
    """The before/after PACL models, their image view and the device they run on."""

    models: dict[str, PaclModel]
    config: dict[str, Any]
    view: ViewConfig
    device: torch.device


def load_encoders(pacl: StageArtifact, device: str | None) -> Encoders:
    """Both PACL model files of a finished pacl stage, on the device, in eval mode."""
    from affectflow.models.encoder_runtime import resolve_device
    from affectflow.models.pacl.augment import ViewConfig
    from affectflow.models.pacl.checkpoint import load_model

    resolved = resolve_device(device)
    models, config = {}, {}
    for encoder, file in MODEL_FILES.items():
        model, config = load_model(pacl.path / file)
        models[encoder] = model.to(resolved).eval()
    view = ViewConfig(int(config["image_size"]), tuple(config["mean"]), tuple(config["std"]))
    return Encoders(models, config, view, resolved)


def _missing_annotation(row: dict[str, Any], tasks: list[TaskKind]) -> dict[str, str] | None:
    """The reject reason and detail of a row lacking what one of the tasks needs, or None."""
    for task in tasks:
        column, reason = TASK_NEEDS[task]
        if row[column] is None:
            return {"reason": reason,
                    "detail": f"the labelled set has no {column} for it, which {task} needs"}
    return None


def pacl_artifact(ctx: StageContext[ProbeParams]) -> StageArtifact:
    """The pacl stage evaluated: this run's (checked by the runner, as every input is) or another
    run's (`pacl_from`), whose files are checked against their records here."""
    if ctx.params.pacl_from is None:
        return ctx.input("pacl")
    pacl = StageArtifact(ctx.params.pacl_from)
    pacl.check_intact(f"probe.pacl_from names {pacl.path}, which must be repaired first: "
                      f"{pacl.repair_hint()}")
    return pacl


class ProbeStage(Stage[ProbeParams]):
    name = "probe"
    inputs = ("pacl", "probe_ingest")
    reads = (TableRef("probe_ingest", tuple(_INGEST_COLUMNS)),)
    Params = ProbeParams
    schema = SCHEMA
    side_schemas: ClassVar[dict[str, pa.Schema]] = {FEATURES: pa.schema([(SAMPLE_ID, pa.string()),
                                         *[(encoder, pa.list_(pa.float32())) for encoder in ENCODERS]]),
                    PREDICTIONS: PREDICTIONS_SCHEMA}

    def input_names(self, params: ProbeParams) -> tuple[str, ...]:
        return ("probe_ingest",) if params.pacl_from else self.inputs

    def source_fingerprint(self, params: ProbeParams, settings: Any) -> str | None:
        """Another run's pacl stage is an external input: what it computed and what its files
        hold (its fingerprint and digest, as the runner takes them of an input)."""
        if params.pacl_from is None:
            return None
        pacl = StageArtifact(params.pacl_from)
        return hash_value([pacl.fingerprint, pacl.digest])

    def check_config(self, params: ProbeParams, sections: dict[str, Any]) -> None:
        if params.pacl_from and "pacl" in sections:
            raise ValueError(f"probe.pacl_from ({params.pacl_from}) evaluates another run's PACL "
                             "model, so this run's pacl stage would go unused; remove pacl from "
                             "run.stages or remove probe.pacl_from")
        ingest = sections.get("probe_ingest")
        for task in params.tasks:
            if ingest is not None and task in TASK_SETTINGS and not TASK_SETTINGS[task][0](ingest):
                raise ValueError(f"probe.tasks lists {task}, which needs {TASK_SETTINGS[task][1]}")
        if "finetune" in params.evaluations:
            encoder = (sections["pacl"].visual_encoder if "pacl" in sections
                       else pacl_params(params.pacl_from)["visual_encoder"] if params.pacl_from
                       else None)
            if encoder is not None:
                try:
                    params.backbone_lr(encoder)
                except UserError as error:
                    raise ValueError(f"{error.message}; {error.hint}") from None

    def prepare(self, ctx: StageContext[ProbeParams]) -> list[int]:
        return ctx.input("probe_ingest").shard_ids()

    def setup(self, ctx: StageContext[ProbeParams]) -> Encoders:
        return load_encoders(pacl_artifact(ctx), ctx.params.device)

    def process(self, ctx: StageContext[ProbeParams], state: Encoders,
                shard_id: int) -> ShardOutput:
        """Backbone features of every labelled image under both encoders (centre view); rows
        without what a task needs are rejected, so every task sees the same rows."""
        from affectflow.core.loading import PixelRequest, failure_reason, pixel_batches
        from affectflow.models.encoder_runtime import inference_context, intra_op_threads
        from affectflow.models.pacl.augment import eval_views, square_pixels
        from affectflow.stages.batching import loader_settings

        params = ctx.params
        rows = ctx.input("probe_ingest").read_shard(shard_id, _INGEST_COLUMNS).to_pylist()
        rejected, labelled = [], []
        for row in rows:
            missing = _missing_annotation(row, params.tasks)
            if missing is None:
                labelled.append(row)
            else:
                rejected.append({**row, **missing})
        loaded: list[dict[str, Any]] = []
        features: dict[str, list[np.ndarray]] = {encoder: [] for encoder in ENCODERS}
        loading = loader_settings(ctx.settings, state.device)
        store = loading.cache.store(square_pixels(state.view.image_size, loading.decoder))
        requests = [PixelRequest(row[IMAGE_PATH], row[IMAGE_SHA256]) for row in labelled]
        for batch in pixel_batches(requests, params.batch_size, store, loading.workers, state.device):
            rejected += [{**labelled[index], "reason": failure_reason(error), "detail": error}
                         for index, error in batch.failures]
            if batch.stacked is None:
                continue
            loaded += [labelled[index] for index in batch.indices]
            pixels = eval_views(batch.stacked.to(state.device), state.view)
            with inference_context(state.device), intra_op_threads(params.cpu_threads):
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
        from affectflow.models.encoder_runtime import intra_op_threads

        params = ctx.params
        data, annotations, duplicates = self._probe_set(ctx)
        ingest = ctx.input("probe_ingest").manifest["params"]
        tasks = [make_task(kind, annotations, data.splits, ingest, params.hierarchy_head)
                 for kind in params.tasks]
        encoders = load_encoders(pacl_artifact(ctx), params.device)
        with intra_op_threads(params.cpu_threads):
            evaluated = [self._evaluate(ctx, data, task, encoders) for task in tasks]
        return self._write_results(ctx, data, evaluated, encoders, ingest, duplicates)

    def _evaluate(self, ctx: StageContext[ProbeParams], data: ProbeSet, task: ProbeTask,
                  encoders: Encoders) -> tuple[TaskResults, dict[str, dict[str, Evaluated]]]:
        """Every configured evaluation of one task, for both encoders."""
        from affectflow.stages.batching import loader_settings
        from affectflow.stages.probe.evaluate import finetune_evaluation, linear_evaluation, zero_shot_evaluation
        from affectflow.stages.probe.zeroshot import prompt_variants

        params = ctx.params
        runs: dict[str, Callable[[str], Evaluated]] = {}
        titles: dict[str, str] = {}
        note = None
        for evaluation in params.evaluations:
            if evaluation in EVALUATION_TITLES:
                titles[evaluation] = EVALUATION_TITLES[evaluation]
            if evaluation == "linear":
                runs["linear"] = partial(linear_evaluation, data, task,
                                         training=params.linear_training())
            elif evaluation == "finetune":
                backbone_lr = params.backbone_lr(encoders.config["visual_encoder"])
                runs["finetune"] = lambda encoder, lr=backbone_lr: finetune_evaluation(
                    data, task, encoders.models[encoder], encoders.view, params.finetune_training(),
                    lr, loader_settings(ctx.settings, encoders.device), encoders.device)
            elif task.prompt_classes is None:
                note = f"Zero-shot: not defined for {task.kind} (there are no class names to prompt)."
            else:
                prompts = self._prompts(task.prompt_classes, params, encoders)
                for variant in prompt_variants(params.prompts, params.zero_shot_ensemble):
                    runs[variant.key] = lambda encoder, v=variant, p=prompts: zero_shot_evaluation(
                        data, task, encoder, encoders.models[encoder], p, v)
                    titles[variant.key] = variant.title
        by_key = {key: {encoder: run(encoder) for encoder in ENCODERS} for key, run in runs.items()}
        results = {key: {encoder: outcome.result for encoder, outcome in by_encoder.items()}
                   for key, by_encoder in by_key.items()}
        return TaskResults(task, titles, results, note), by_key

    @staticmethod
    def _prompts(blocks: list[list[str]], params: ProbeParams, encoders: Encoders) -> list[torch.Tensor]:
        """(classes, templates, text_dim) prompt features per block, from one encoder load."""
        from affectflow.stages.probe.zeroshot import prompt_features

        names = [name for block in blocks for name in block]
        features = prompt_features(encoders.config["text_encoder"], names, params.prompts,
                                   params.device)
        return list(features.split([len(block) for block in blocks]))

    def _probe_set(self, ctx: StageContext[ProbeParams]) -> tuple[ProbeSet, Annotations, dict[str, int]]:
        """Kept rows with image paths, both encoders' features and their annotations, and how
        many val / test images are byte-identical to a train image (a leak the data set has)."""
        from affectflow.stages.probe.evaluate import ProbeSet

        output = StageArtifact(ctx.output_dir)
        rows = output.read_all().sort_by(SAMPLE_ID)
        features = output.read_all(table=FEATURES).sort_by(SAMPLE_ID)
        splits = np.asarray(rows[SPLIT].to_pylist())
        for split in (TRAIN, VAL, TEST):
            if not (splits == split).any():
                raise UserError(f"the labelled set has no '{split}' rows; the probe trains on "
                                "train, selects on val and reports on test",
                                hint="give probe_ingest split files, split_ratios with all three "
                                     "> 0, or val_from_train when the data set has no val split")
        ingest = ctx.input("probe_ingest").read_all(
            [SAMPLE_ID, IMAGE_PATH, IMAGE_SHA256, LABEL_SET, TARGETS]).to_pandas().set_index(SAMPLE_ID)
        ids = rows[SAMPLE_ID].to_pylist()
        chosen = ingest.loc[ids]
        data = ProbeSet(sample_ids=np.asarray(ids), splits=splits,
                        paths=chosen[IMAGE_PATH].tolist(), sha256s=chosen[IMAGE_SHA256].tolist(),
                        features={encoder: column_vectors(features[encoder]) for encoder in ENCODERS})
        annotations = Annotations(
            labels=rows[LABEL].to_pylist(), label_ids=rows[LABEL_ID].to_pylist(),
            label_sets=[None if s is None else list(s) for s in chosen[LABEL_SET]],
            targets=[None if t is None else [float(v) for v in t] for t in chosen[TARGETS]])
        hashes = chosen[IMAGE_SHA256].to_numpy()
        train_hashes = set(hashes[splits == TRAIN])
        duplicates = {split: int(sum(h in train_hashes for h in hashes[splits == split]))
                      for split in (VAL, TEST)}
        return data, annotations, duplicates

    def _write_results(self, ctx: StageContext[ProbeParams], data: ProbeSet,
                       evaluated: list[tuple[TaskResults, dict[str, dict[str, Evaluated]]]],
                       encoders: Encoders, ingest: dict[str, Any],
                       duplicates: dict[str, int]) -> dict[str, Any]:
        """Predictions table, before/after confusion pictures, results.md and the summary."""
        from affectflow.stages.probe.evaluate import split_counts

        test = data.rows(TEST)
        prediction_rows, figures = [], []
        for item, by_key in evaluated:
            task = item.task
            for key, by_encoder in by_key.items():
                for encoder, outcome in by_encoder.items():
                    shown = task.prediction_rows(outcome.test_scores, task.truth[test],
                                                 outcome.calibrated)
                    prediction_rows += [
                        {SAMPLE_ID: data.sample_ids[index], "task": task.kind, "evaluation": key,
                         "encoder": encoder, "level": row.level, LABEL: row.label,
                         PREDICTED: row.predicted, "scores": row.scores}
                        for index, sample_rows in zip(test, shown) for row in sample_rows]
                figures += self._draw_confusions(ctx, item, key, by_encoder)
        write_parquet(ctx.output_dir / PREDICTIONS / shard_name(0),
                      pa.Table.from_pylist(prediction_rows, schema=PREDICTIONS_SCHEMA))
        task_results = [item for item, _ in evaluated]
        splits = split_counts(data)
        markdown = results_markdown(task_results, ingest.get("dataset_name") or "probe_ingest",
                                    encoders.config["visual_encoder"], splits)
        if any(duplicates.values()):
            markdown += (f"\nWarning: {duplicates[VAL]} val and {duplicates[TEST]} test images are "
                         "byte-identical to a train image (the data set repeats them).\n")
        write_text(ctx.output_dir / RESULTS_FILE, markdown)
        table = results_table(task_results)
        for row in table:
            logger.info("probe %s %s%s: test %s %.4f before PACL, %.4f after (%+.4f)", row["task"],
                        row["evaluation"], f" {row['level']}" if row["level"] else "", row["metric"],
                        row["before"], row["after"], row["delta"])
        return {"table": table,
                "details": {item.task.kind: {key: {encoder: result.to_dict()
                                                   for encoder, result in by_encoder.items()}
                                             for key, by_encoder in item.results.items()}
                            for item in task_results},
                "tasks": {item.task.kind: item.task.describe() for item in task_results},
                "evaluations": {item.task.kind: item.titles for item in task_results},
                "splits": splits, "duplicates_of_train": duplicates,
                "files": [RESULTS_FILE, *figures]}

    @staticmethod
    def _draw_confusions(ctx: StageContext[ProbeParams], item: TaskResults, key: str,
                         by_encoder: dict[str, Evaluated]) -> list[str]:
        """One before/after picture per confusion matrix the task has (one per level)."""
        from affectflow.stages.metrics import draw_confusions

        figures = []
        before, after = (item.task.confusions(by_encoder[e].result.test) for e in ENCODERS)
        for (level, classes, matrix_before), (_, _, matrix_after) in zip(before, after):
            name = key.replace("/", "-") + (f"-{level}" if level else "")
            figure = f"{CONFUSION_DIR}/{item.task.kind}/{name}.png"
            where = f"{item.titles[key]}{f', {level}' if level else ''}"
            draw_confusions(ctx.output_dir / figure, [
                (f"{where}, {encoder} PACL: accuracy "
                 f"{100 * np.trace(matrix) / max(1, np.sum(matrix)):.1f}%", matrix)
                for encoder, matrix in zip(ENCODERS, (matrix_before, matrix_after))], classes)
            figures.append(figure)
        return figures
