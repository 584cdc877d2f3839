"""`cternet_eval`: predict the test split with the selected CTERNet and score it.

Only split == "test" rows are this stage's input. Each gets a prediction row (the class it is
scored against, `target`: its label, or the label's polarity for a `task: polarity` model;
predicted class, class probabilities = softmax of the model's prediction, correct) or a reject:
no label, a label without a polarity, a label outside the model's classes, or an image that no
longer loads. `finalize` computes the metrics (stages/metrics.py, stages/cternet/metrics.py),
draws the confusion matrix and writes `report.md` with the paper's figures beside ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from affectflow.core.atomic import write_text
from affectflow.core.errors import UserError
from affectflow.core.stage import ShardOutput, Stage, StageContext, StageParams, TableRef
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, SOURCE_ID, StageArtifact, make_rejects
from affectflow.stages.cternet.metrics import PAPER_ACCURACY, grouped_polarity_accuracy
from affectflow.stages.cternet.train import TARGET, Targets
from affectflow.stages.ingest.stage import IMAGE_PATH, IMAGE_SHA256, LABEL, SPLIT, TEST
from affectflow.stages.param_types import Device

if TYPE_CHECKING:
    from affectflow.models.cternet.classifier import TrainedClassifier

REPORT_FILE = "report.md"

PREDICTED = "predicted"
PROBABILITIES = "probabilities"
CORRECT = "correct"
SCHEMA = pa.schema([
    (SAMPLE_ID, pa.string()),
    (LABEL, pa.string()),
    (TARGET, pa.string()),
    (PREDICTED, pa.string()),
    (PROBABILITIES, pa.list_(pa.float32())),
    (CORRECT, pa.bool_()),
])
_INGEST_COLUMNS = [SAMPLE_ID, SOURCE_ID, IMAGE_PATH, IMAGE_SHA256, LABEL, SPLIT]


class CTERNetEvalParams(StageParams):
    batch_size: int = Field(64, ge=1)
    device: Device = None
    cpu_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")


@dataclass
class EvalState:
    classifier: TrainedClassifier
    targets: Targets


class CTERNetEvalStage(Stage[CTERNetEvalParams]):
    name = "cternet_eval"
    uses_accelerator = True
    inputs = ("ingest", "cternet_train")
    reads = (TableRef("ingest", tuple(_INGEST_COLUMNS)),)
    Params = CTERNetEvalParams
    schema = SCHEMA

    def prepare(self, ctx: StageContext[CTERNetEvalParams]) -> list[int]:
        ingest = ctx.input("ingest")
        splits = ingest.read_all(columns=[SPLIT])[SPLIT]
        if not pc.sum(pc.equal(splits, TEST)).as_py():
            raise UserError("the ingest has no split == 'test' rows to evaluate",
                            hint="give ingest.split_ratios a test share, or add split_dir/test.txt")
        return ingest.shard_ids()

    def setup(self, ctx: StageContext[CTERNetEvalParams]) -> EvalState:
        from affectflow.models.cternet.classifier import load_classifier

        params = ctx.params
        training = ctx.input("cternet_train")
        classifier = load_classifier(training.path, params.device)
        summary = training.manifest["summary"]
        return EvalState(classifier, Targets(summary["task"], summary["polarity_map"],
                                             {name: i for i, name in enumerate(classifier.classes)}))

    def process(self, ctx: StageContext[CTERNetEvalParams], state: EvalState,
                shard_id: int) -> ShardOutput:
        import torch

        from affectflow.core.loading import PixelRequest, failure_reason, pixel_batches
        from affectflow.models.cternet.data import cached_pixels, eval_transform
        from affectflow.models.encoder_runtime import inference_context, intra_op_threads
        from affectflow.stages.batching import loader_settings

        params = ctx.params
        table = ctx.input("ingest").read_shard(shard_id, columns=_INGEST_COLUMNS)
        rows = [row for row in table.to_pylist() if row[SPLIT] == TEST]
        rejects = []
        scorable = []
        for row in rows:
            target = state.targets.target(row[LABEL])
            if isinstance(target, str):
                scorable.append({**row, TARGET: target})
            else:
                rejects.append({**row, "reason": target[0], "detail": target[1]})
        kept = []
        device = state.classifier.device
        config = state.classifier.model.config
        loading = loader_settings(ctx.settings, device)
        store = loading.cache.store(cached_pixels(config, loading.decoder))
        requests = [PixelRequest(row[IMAGE_PATH], row[IMAGE_SHA256]) for row in scorable]
        for batch in pixel_batches(requests, params.batch_size, store, loading.workers, device,
                                   view=eval_transform(config)):
            rejects += [{**scorable[i], "reason": failure_reason(error), "detail": error}
                        for i, error in batch.failures]
            if batch.stacked is None:
                continue
            with intra_op_threads(params.cpu_threads), inference_context(device):
                logits = state.classifier.model(batch.stacked.to(device)).logits
            probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
            for i, row_probabilities in zip(batch.indices, probabilities):
                predicted = state.classifier.classes[int(row_probabilities.argmax())]
                kept.append({SAMPLE_ID: scorable[i][SAMPLE_ID], LABEL: scorable[i][LABEL],
                             TARGET: scorable[i][TARGET], PREDICTED: predicted,
                             PROBABILITIES: row_probabilities.tolist(),
                             CORRECT: predicted == scorable[i][TARGET]})
        return ShardOutput(rows_in=len(rows),
                           tables={MAIN_TABLE: pa.Table.from_pylist(kept, schema=SCHEMA)},
                           rejects=make_rejects(rejects))

    def finalize(self, ctx: StageContext[CTERNetEvalParams]) -> dict[str, Any]:
        """Metrics, confusion matrix, markdown report; the metrics also go to the manifest."""
        from affectflow.stages.cternet.report import CONFUSION_FIGURE, render_report
        from affectflow.stages.metrics import classification_metrics, draw_confusions

        training = ctx.input("cternet_train").manifest["summary"]
        classes: list[str] = training["classes"]
        rows = StageArtifact(ctx.output_dir).read_all(columns=[TARGET, PREDICTED])
        if rows.num_rows == 0:
            raise UserError("no test image could be scored, so there are no metrics",
                            hint=f"see the reasons in {ctx.output_dir / 'rejects.parquet'}")
        index = {name: i for i, name in enumerate(classes)}
        true = np.array([index[name] for name in rows[TARGET].to_pylist()], dtype=np.int64)
        predicted = np.array([index[name] for name in rows[PREDICTED].to_pylist()],
                             dtype=np.int64)
        metrics = classification_metrics(true, predicted, classes)
        polarity_map = training["polarity_map"]
        grouped = (grouped_polarity_accuracy(true, predicted, classes, polarity_map)
                   if training["task"] == "emotion" and polarity_map is not None else None)
        paper = PAPER_ACCURACY.get(polarity_map or "", {}).get(training["task"])
        draw_confusions(ctx.output_dir / CONFUSION_FIGURE,
                        [(f"test: accuracy {100 * metrics.accuracy:.1f}%", metrics.confusion)],
                        classes)
        write_text(ctx.output_dir / REPORT_FILE, render_report(metrics, grouped, paper, training))
        return {**metrics.as_dict(), "task": training["task"],
                "grouped_polarity_accuracy": grouped, "paper_accuracy_percent": paper,
                "report": REPORT_FILE, "figures": [CONFUSION_FIGURE]}
