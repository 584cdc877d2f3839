"""The `probe` stage: metrics against scikit-learn, selection that never sees test labels,
zero-shot through the teacher the PACL model was trained against, and the before/after table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from affectflow.core.runner import StageJob, run_stage
from affectflow.models.pacl.checkpoint import load_model
from affectflow.models.specs import packaged_model_path
from affectflow.models.text_encoder import load_text_encoder
from affectflow.pipelines.execution import RunRef
from affectflow.stages.pacl.params import PaclParams
from affectflow.stages.pacl.stage import PaclStage
from affectflow.stages.probe.evaluate import ProbeSet, linear_evaluation
from affectflow.stages.probe.linear import BestEpoch, HeadTraining
from affectflow.stages.probe.params import ProbeParams
from affectflow.stages.probe.stage import ProbeStage
from affectflow.stages.probe.zeroshot import PAPER_PROMPTS
from tests.stages.pacl_upstream import run_upstream, settings, write_labelled_folder

MINILM = str(packaged_model_path("all-MiniLM-L6-v2"))

torch.set_num_threads(1)


def test_best_epoch_prefers_accuracy_then_lower_loss_then_earlier() -> None:
    selection = BestEpoch()
    for accuracy, loss in ((0.5, 1.0), (0.75, 0.9), (0.75, 0.8), (0.75, 0.8), (0.6, 0.1)):
        selection.record(accuracy, loss)
    assert selection.best == 2


# ---------------------------------------------------------------- no test leakage
def synthetic_probe_set(seed: int = 0) -> ProbeSet:
    rng = np.random.default_rng(seed)
    count, classes = 120, 4
    labels = np.arange(count) % classes
    centres = rng.normal(size=(classes, 16))
    features = centres[labels] + rng.normal(scale=1.5, size=(count, 16))
    splits = np.array(["train"] * 72 + ["val"] * 24 + ["test"] * 24)
    return ProbeSet(sample_ids=np.array([f"s{i}" for i in range(count)]), splits=splits,
                    labels=labels, paths=[""] * count,
                    features={"after": features.astype(np.float32)},
                    class_names=[f"c{i}" for i in range(classes)])


def test_poisoned_test_labels_change_nothing_but_the_reported_test_metrics() -> None:
    training = HeadTraining(epochs=15, lr=1e-2, batch_size=16, weight_decay=0.0, seed=0)
    clean = synthetic_probe_set()
    poisoned = synthetic_probe_set()
    test = poisoned.mask("test")
    poisoned.labels[test] = (poisoned.labels[test] + 1) % 4
    poisoned.features["after"][test] = 0.0  # and test features are garbage too
    reference, attacked = (linear_evaluation(data, "after", training) for data in (clean, poisoned))
    assert attacked.result.best_epoch == reference.result.best_epoch
    assert attacked.result.val_accuracy == reference.result.val_accuracy
    assert reference.result.metrics.accuracy > 0.5
    assert attacked.result.metrics.accuracy != reference.result.metrics.accuracy


# ---------------------------------------------------------------- the stage
PACL: dict[str, Any] = {"visual_encoder": "timm:test_resnet", "pretrained": False, "image_size": 32,
                        "embed_dim": 16, "epochs": 3, "samples_per_partition": 4, "backbone_lr": 1e-3,
                        "head_lr": 1e-2}


@pytest.fixture(scope="module")
def probed(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunRef, dict[str, Any]]:
    root = tmp_path_factory.mktemp("probe")
    # The teacher pools CLS while the emotional scorer pools the mean: zero-shot must follow the teacher.
    ref = run_upstream(demo_dir, root, labelled=write_labelled_folder(root / "fi"), teacher={"pooling": "cls"})
    run_stage(StageJob(ref.store, PaclStage(), PaclParams(**PACL), settings(ref)))
    params = ProbeParams(evaluations=["linear", "zero_shot", "finetune"], linear_epochs=5,
                         finetune_epochs=1, finetune_batch_size=16)
    return ref, run_stage(StageJob(ref.store, ProbeStage(), params, settings(ref)))


def test_accounting_features_and_predictions_cover_test_only(probed: tuple[RunRef, dict[str, Any]]) -> None:
    ref, manifest = probed
    assert manifest["rows_in"] == ref.store.stage("probe_ingest").num_rows()
    assert manifest["rows_in"] == manifest["rows_out"] + manifest["rows_rejected"]
    features = ref.store.stage("probe").read_all(table="features")
    assert features.num_rows == manifest["rows_out"]
    assert features.schema.field("before").type.list_size == 96  # test_resnet's pooled width
    rows = ref.store.stage("probe").read_all().to_pandas().set_index("sample_id")
    predictions = ref.store.stage("probe").read_all(table="predictions").to_pandas()
    assert set(rows.loc[predictions["sample_id"], "split"]) == {"test"}
    test_count = int((rows["split"] == "test").sum())
    assert len(predictions) == test_count * 3 * 2  # three evaluations x before/after
    assert manifest["summary"]["splits"]["test"] == test_count


def test_before_after_table_in_summary_and_markdown(probed: tuple[RunRef, dict[str, Any]]) -> None:
    ref, manifest = probed
    summary = manifest["summary"]
    assert [row["evaluation"] for row in summary["table"]] == ["linear", "zero_shot", "finetune"]
    predictions = ref.store.stage("probe").read_all(table="predictions").to_pandas()
    for row in summary["table"]:
        for encoder in ("before", "after"):
            chosen = predictions[(predictions["evaluation"] == row["evaluation"])
                                 & (predictions["encoder"] == encoder)]
            assert row[f"accuracy_{encoder}"] == pytest.approx(
                (chosen["label"] == chosen["predicted"]).mean())
        assert row["accuracy_delta"] == pytest.approx(row["accuracy_after"] - row["accuracy_before"])
    markdown = (ref.store.stage("probe").path / "results.md").read_text()
    for title in ("| Linear probe |", "| Zero-shot |", "| Fine-tuning |", "Acc before", "Acc after"):
        assert title in markdown
    for name in summary["classes"]:
        assert f"| {name} |" in markdown
    for figure in summary["files"][1:]:
        assert (ref.store.stage("probe").path / figure).read_bytes()[:4] == b"\x89PNG"
    assert summary["details"]["linear"]["after"]["best_epoch"] in range(1, 6)


def test_zero_shot_embeds_the_paper_prompts_with_the_teacher_text_encoder(
        probed: tuple[RunRef, dict[str, Any]]) -> None:
    ref, manifest = probed
    classes = manifest["summary"]["classes"]
    model, config = load_model(ref.store.stage("pacl").path / "model.pt")
    assert config["text_encoder"]["pooling"] == "cls"
    assert ref.store.stage("emotional").manifest["params"]["pooling"] == "mean"
    encoder = load_text_encoder(MINILM, pooling="cls")
    prompts = encoder.encode([t.format(name) for name in classes for t in PAPER_PROMPTS])
    class_embeddings = model.encode_prompts(prompts.view(len(classes), 2, -1))
    features = ref.store.stage("probe").read_all(table="features").to_pandas().set_index("sample_id")
    predictions = ref.store.stage("probe").read_all(table="predictions").to_pandas()
    chosen = predictions[(predictions["evaluation"] == "zero_shot") & (predictions["encoder"] == "after")]
    vectors = torch.tensor(np.stack(features.loc[chosen["sample_id"], "after"].to_numpy()))
    with torch.no_grad():
        images = torch.nn.functional.normalize(model.image_projection(vectors), dim=-1)
        expected = (images @ class_embeddings.T).argmax(dim=1)
    assert chosen["predicted"].tolist() == [classes[i] for i in expected.tolist()]


def test_probe_params_are_checked() -> None:
    with pytest.raises(ValidationError, match="exactly once"):
        ProbeParams(prompts=["A photo with emotion."])
    with pytest.raises(ValidationError, match="at most once"):
        ProbeParams(evaluations=["linear", "linear"])
    with pytest.raises(ValidationError, match="extra"):
        ProbeParams(linear_epoch=3)
