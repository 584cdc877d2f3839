"""`cternet_train` and `cternet_eval` through the real runner: accounting, rejects, val-only
selection, the test split never read, exact resume, metrics equal to scikit-learn's, maps."""

from __future__ import annotations

import base64
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
import yaml
from PIL import Image
from pydantic import ValidationError
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from affectflow.core.atomic import write_parquet
from affectflow.core.errors import UserError
from affectflow.core.pixels import load_pixels
from affectflow.core.runner import StageJob, run_stage
from affectflow.core.runs import RunStore
from affectflow.core.store import PLAN_DIR
from affectflow.demo.generate import write_image_folder
from affectflow.demo.scenes import FI_CLASSES
from affectflow.models.cternet import train as cternet_train
from affectflow.models.cternet.checkpoint import LAST_CHECKPOINT
from affectflow.models.cternet.classifier import load_classifier
from affectflow.models.cternet.data import cached_pixels, eval_transform
from affectflow.pipelines.config import RunSettings
from affectflow.pipelines.publish import key_part, publish_stage
from affectflow.stages.cternet.evaluate import CTERNetEvalParams, CTERNetEvalStage
from affectflow.stages.cternet.maps import across_classes, write_sentiment_maps
from affectflow.stages.cternet.metrics import grouped_polarity_accuracy
from affectflow.stages.cternet.report import render_report
from affectflow.stages.cternet.train import CTERNetTrainParams, CTERNetTrainStage
from affectflow.stages.ingest.stage import LABEL, IngestParams, IngestStage
from affectflow.stages.metrics import classification_metrics
from tests.conftest import write_image
from tests.prefect_readback import artifacts_with_prefix
from tests.stages.helpers import record_edit

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# The paper's choices except the head: Eq. 5's total effect names two classes at most
# (tests/models/test_cternet.py), and these tests need a model that learns eight.
TRAIN = {"backbone": "test_resnet", "pretrained": False, "input_size": 48, "epochs": 8,
         "batch_size": 8, "lr": 0.02, "step_size": 6, "crop_scale": [0.5, 1.0],
         "cpu_threads": 1, "device": "cpu", "head": "attended", "polarity_map": "fi"}
# 8 images per class split 4 / 2 / 2: 32 train, 16 val, 16 test rows.
INGEST = {"source": "image_folder", "dataset_name": "fi-test", "split_ratios": [0.5, 0.25, 0.25],
          "shard_size": 20}
TIMING_FIELDS = ["images_per_second", "seconds"]
CHAIN = ("ingest", "cternet_train", "cternet_eval")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fi_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's FI-style folder, small; fear's files carry HTML specials in their names."""
    root = tmp_path_factory.mktemp("fi-data") / "fi"
    write_image_folder(root, per_class=8, rng=random.Random(3), size=64)
    for path in sorted((root / "fear").iterdir()):
        path.rename(path.with_name(f"<img src=x onerror=alert(1)>&{path.name}"))
    return root


def run(root: Path, run_id: str, data: Path, stages: tuple[str, ...] = CHAIN,
        **train: Any) -> RunStore:
    """Run the stages in order through core.runner, as the flow would."""
    store = RunStore(root, run_id)
    store.create({}, {})
    settings = RunSettings(artifact_root=root, workers=2)
    jobs = {"ingest": (IngestStage(), IngestParams(**INGEST, path=data)),
            "cternet_train": (CTERNetTrainStage(), CTERNetTrainParams(**{**TRAIN, **train})),
            "cternet_eval": (CTERNetEvalStage(), CTERNetEvalParams(batch_size=8, device="cpu"))}
    for name in stages:
        stage, params = jobs[name]
        manifest = run_stage(StageJob(store, stage, params, settings))
        assert manifest["rows_in"] == manifest["rows_out"] + manifest["rows_rejected"]
    return store


@pytest.fixture(scope="module")
def baseline(fi_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    return run(tmp_path_factory.mktemp("artifacts"), "baseline", fi_dir)


def rewrite_ingest(store: RunStore, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Edit the finished ingest table in place (its fingerprint stays)."""
    artifact = store.stage("ingest")
    for shard_id, table in artifact.iter_shards():
        rows = [change(row) for row in table.to_pylist()]
        write_parquet(artifact.shard_path(shard_id),
                      pa.Table.from_pylist(rows, schema=table.schema))
    record_edit(artifact)


def split_rows(store: RunStore, split: str) -> list[dict[str, Any]]:
    table = store.stage("ingest").read_all()
    return table.filter(pc.equal(table["split"], split)).to_pylist()


def model_state(store: RunStore) -> dict[str, torch.Tensor]:
    return torch.load(store.stage("cternet_train").path / "model.pt", weights_only=True)


def history(store: RunStore) -> list[dict[str, Any]]:
    table = store.stage("cternet_train").read_all(table="history")
    return table.drop_columns(TIMING_FIELDS).to_pylist()


def assert_same_model(first: RunStore, second: RunStore) -> None:
    state, other = model_state(first), model_state(second)
    assert state.keys() == other.keys()
    assert all(torch.equal(state[key], other[key]) for key in state)
    assert history(first) == history(second)


def test_training_rows_outputs_and_summary(baseline: RunStore) -> None:
    train = baseline.stage("cternet_train")
    manifest = train.manifest
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_rejected"]) == (48, 48, 0)
    rows = train.read_all()
    assert set(rows["split"].to_pylist()) == {"train", "val"}
    test_ids = {row["sample_id"] for row in split_rows(baseline, "test")}
    assert not set(rows["sample_id"].to_pylist()) & test_ids
    summary = manifest["summary"]
    assert summary["classes"] == sorted(FI_CLASSES)
    counts = (summary["train_images"], summary["val_images"], summary["test_rows_not_read"])
    assert counts == (32, 16, 16)
    assert summary["weights_source"] == "random" and summary["resumed_from_epoch"] == 0
    assert train.num_rows("history") == TRAIN["epochs"]
    assert (train.path / "training_curves.png").stat().st_size > 0
    assert load_classifier(train.path, "cpu").classes == sorted(FI_CLASSES)


def test_selected_epoch_is_the_best_on_val_and_model_pt_is_it(baseline: RunStore) -> None:
    summary = baseline.stage("cternet_train").manifest["summary"]
    val_accuracy = [row["val_accuracy"] for row in history(baseline)]
    assert summary["best_epoch"] == val_accuracy.index(max(val_accuracy)) + 1
    classifier = load_classifier(baseline.stage("cternet_train").path, "cpu")
    preprocess = eval_transform(classifier.model.config)
    decoded = cached_pixels(classifier.model.config)
    val = split_rows(baseline, "val")
    with torch.no_grad():
        pixels = torch.stack([preprocess(load_pixels(row["image_path"], None, decoded))
                              for row in val])
        logits = classifier.model(pixels).logits
    predicted = [classifier.classes[i] for i in logits.argmax(dim=1).tolist()]
    accuracy = np.mean([p == r["label"] for p, r in zip(predicted, val)])
    assert accuracy == pytest.approx(summary["best_val_accuracy"])


def test_learning_is_above_chance(baseline: RunStore) -> None:
    summary = baseline.stage("cternet_eval").manifest["summary"]
    assert summary["accuracy"] > 2 / 8  # twice chance for 8 classes


def test_test_split_is_never_read_by_training(baseline: RunStore, fi_dir: Path,
                                              tmp_path: Path) -> None:
    data = tmp_path / "fi"
    shutil.copytree(fi_dir, data)
    store = run(tmp_path / "artifacts", "poisoned", data, stages=("ingest",))
    test_ids = {row["sample_id"] for row in split_rows(store, "test")}
    for row in split_rows(store, "test"):
        Path(row["image_path"]).write_bytes(b"not an image any more")
    poisoned = {"label": "zz-poisoned-class"}  # would change the class list if test rows counted
    rewrite_ingest(store, lambda row: row | poisoned if row["sample_id"] in test_ids else row)
    run(tmp_path / "artifacts", "poisoned", data, stages=("cternet_train",))
    assert store.stage("cternet_train").manifest["rows_rejected"] == 0
    assert_same_model(store, baseline)


def test_unusable_training_rows_are_rejected_with_reasons(baseline: RunStore, fi_dir: Path,
                                                          tmp_path: Path) -> None:
    data = tmp_path / "fi"
    shutil.copytree(fi_dir, data)
    store = run(tmp_path / "artifacts", "rejects", data, stages=("ingest",))
    train, test = split_rows(store, "train"), split_rows(store, "test")
    kept = [row for row in train if row["label"] != "sadness"]
    Path(kept[0]["image_path"]).unlink()
    Path(kept[1]["image_path"]).write_bytes(b"changed after ingest")
    Path(test[0]["image_path"]).write_bytes(b"changed after ingest")
    unlabelled = kept[2]["sample_id"]
    rewrite_ingest(store, lambda row: row | {"label": None} if row["sample_id"] == unlabelled
                   else row)
    classes = [name for name in FI_CLASSES if name != "sadness"]
    run(tmp_path / "artifacts", "rejects", data, stages=("cternet_train", "cternet_eval"),
        classes=classes, polarity_map=None)

    trained = store.stage("cternet_train").manifest
    assert trained["rejects_by_reason"] == {"missing_image": 1, "image_changed": 1,
                                            "missing_label": 1, "label_not_in_classes": 6}
    assert (trained["rows_in"], trained["rows_out"]) == (48, 39)
    assert load_classifier(store.stage("cternet_train").path, "cpu").classes == classes
    evaluated = store.stage("cternet_eval").manifest
    assert evaluated["rejects_by_reason"] == {"label_not_in_classes": 2, "image_changed": 1}
    assert (evaluated["rows_in"], evaluated["rows_out"]) == (16, 13)
    assert evaluated["summary"]["grouped_polarity_accuracy"] is None
    report = (store.stage("cternet_eval").path / "report.md").read_text()
    assert "72.71" not in report and "polarity_map does not name the dataset" in report


def test_too_little_training_data_fails_with_the_fix(fi_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="fewer than one batch of 64") as error:
        run(tmp_path, "small", fi_dir, stages=("ingest", "cternet_train"), batch_size=64)
    assert "batch_size" in error.value.hint


def test_interrupted_training_resumes_to_the_same_model(baseline: RunStore, fi_dir: Path,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    original_save_last = cternet_train.save_last
    epochs_saved: list[int] = []

    def save_then_stop(*args: Any, **kwargs: Any) -> None:
        original_save_last(*args, **kwargs)
        epochs_saved.append(args[-1].epoch)
        if len(epochs_saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cternet_train, "save_last", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "resumed", fi_dir, stages=("ingest", "cternet_train"))
    store = RunStore(tmp_path, "resumed")
    assert not store.stage("cternet_train").complete
    # Ctrl-C records no end of the attempt: once its writer is gone, the stage's derived state is
    # `interrupted` (pipelines/state.py), never done or failed.
    attempt = store.read()["stages"]["cternet_train"]
    assert attempt["status"] == "running" and "finished" not in attempt
    monkeypatch.setattr(cternet_train, "save_last", original_save_last)
    run(tmp_path, "resumed", fi_dir, stages=("ingest", "cternet_train"))
    assert store.stage("cternet_train").manifest["summary"]["resumed_from_epoch"] == 2
    assert_same_model(store, baseline)


def test_training_on_two_gloo_processes_through_torchrun(fi_dir: Path, tmp_path: Path) -> None:
    store = run(tmp_path, "ddp", fi_dir, stages=("ingest", "cternet_train"), processes=2, epochs=2)
    trained = store.stage("cternet_train")
    assert trained.manifest["summary"]["processes"] == 2
    # Each process trains on its half of the 32 images; the epoch's counts are summed over both.
    epochs = trained.read_all(table="history").to_pylist()
    assert [round(row["images_per_second"] * row["seconds"]) for row in epochs] == [32, 32]
    last = torch.load(trained.path / PLAN_DIR / LAST_CHECKPOINT, weights_only=True)
    assert len(last["rng"]) == 2 and not torch.equal(last["rng"][0]["cpu"], last["rng"][1]["cpu"])
    assert not any(key.startswith("module.") for key in last["model"])
    assert load_classifier(trained.path, "cpu").classes == sorted(FI_CLASSES)


def test_eval_rows_and_metrics_equal_scikit_learn(baseline: RunStore) -> None:
    evaluated = baseline.stage("cternet_eval")
    rows = evaluated.read_all().to_pandas()
    assert sorted(rows["sample_id"]) == sorted(r["sample_id"] for r in split_rows(baseline, "test"))
    classes = sorted(FI_CLASSES)
    probabilities = np.stack(rows["probabilities"].to_list())
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert [classes[i] for i in probabilities.argmax(axis=1)] == rows["predicted"].tolist()
    assert (rows["target"] == rows["label"]).all()
    assert (rows["correct"] == (rows["label"] == rows["predicted"])).all()

    summary = evaluated.manifest["summary"]
    true, predicted = rows["label"], rows["predicted"]
    assert summary["accuracy"] == pytest.approx(accuracy_score(true, predicted))
    assert summary["weighted_f1"] == pytest.approx(
        f1_score(true, predicted, labels=classes, average="weighted", zero_division=0))
    precision, recall, f1, support = precision_recall_fscore_support(
        true, predicted, labels=classes, zero_division=0)
    assert [row["name"] for row in summary["per_class"]] == classes
    assert [row["precision"] for row in summary["per_class"]] == pytest.approx(precision)
    assert [row["recall"] for row in summary["per_class"]] == pytest.approx(recall)
    assert [row["f1"] for row in summary["per_class"]] == pytest.approx(f1)
    assert [row["support"] for row in summary["per_class"]] == support.tolist()
    assert summary["confusion"] == confusion_matrix(true, predicted, labels=classes).tolist()
    positive = {"amusement", "awe", "contentment", "excitement"}
    assert summary["grouped_polarity_accuracy"] == pytest.approx(
        np.mean([(t in positive) == (p in positive) for t, p in zip(true, predicted)]))


def test_eval_report_and_figure_put_the_papers_figures_beside_ours(baseline: RunStore) -> None:
    folder = baseline.stage("cternet_eval").path
    summary = baseline.stage("cternet_eval").manifest["summary"]
    report = (folder / "report.md").read_text()
    assert "| metric | this run | CTERNet paper (FI, reported) |" in report
    assert f"| accuracy (8-class) | {100 * summary['accuracy']:.2f} | 72.71 |" in report
    grouped = 100 * summary["grouped_polarity_accuracy"]
    assert (f"| polarity of the 8-class predictions (grouped, not a binary model) | {grouped:.2f} "
            "| — |") in report
    assert "91.01" not in report and "task: polarity" in report
    assert "random weights" in report
    assert summary["paper_accuracy_percent"] == 72.71
    assert (folder / "confusion_matrix.png").stat().st_size > 0


def test_prefect_artifacts_hold_the_metrics_and_the_confusion_matrix(prefect_harness: None,
                                                                      baseline: RunStore) -> None:
    from prefect import flow

    @flow
    def publish() -> list[str]:
        return publish_stage(baseline, "cternet_train") + publish_stage(baseline, "cternet_eval")

    prefix = key_part(baseline.run_id)
    assert publish() == [f"{prefix}-cternet-train-accounting", f"{prefix}-cternet-train-training",
                         f"{prefix}-cternet-eval-accounting", f"{prefix}-cternet-eval-report"]
    found = artifacts_with_prefix(f"{prefix}-cternet-")
    report = str(found[f"{prefix}-cternet-eval-report"])
    summary = baseline.stage("cternet_eval").manifest["summary"]
    assert f"| accuracy (8-class) | {100 * summary['accuracy']:.2f} | 72.71 |" in report
    embedded = re.search(r"!\[confusion matrix\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", report)
    assert embedded is not None
    picture = baseline.stage("cternet_eval").path / "confusion_matrix.png"
    assert base64.b64decode(embedded.group(1)) == picture.read_bytes()
    assert f"`{picture.resolve()}`" in report and baseline.run_id in report
    training = str(found[f"{prefix}-cternet-train-training"])
    train_summary = baseline.stage("cternet_train").manifest["summary"]
    assert f"Epoch {train_summary['best_epoch']} of {train_summary['epochs']} selected on val" in training
    assert "data:image/png;base64," in training


def test_grouped_polarity_accuracy_groups_fi_classes_by_polarity() -> None:
    classes = ["sadness", "amusement", "anger", "awe", "contentment", "disgust", "excitement",
               "fear"]
    index = {name: i for i, name in enumerate(classes)}
    pairs = [("amusement", "awe"), ("anger", "fear"), ("awe", "sadness"),
             ("disgust", "contentment"), ("excitement", "excitement")]
    true = np.array([index[t] for t, _ in pairs])
    predicted = np.array([index[p] for _, p in pairs])
    assert grouped_polarity_accuracy(true, predicted, classes, "fi") == pytest.approx(3 / 5)
    assert grouped_polarity_accuracy(true % 3, predicted % 3, ["a", "b", "c"], "fi") is None


def test_sentiment_maps_are_written_with_escaped_text(baseline: RunStore, tmp_path: Path) -> None:
    index = write_sentiment_maps(baseline, 16, tmp_path / "maps")
    page = index.read_text(encoding="utf-8")
    pictures = sorted((tmp_path / "maps").glob("*.png"))
    assert len(pictures) == 16 and page.count("<figure") == 16
    assert all(f'src="{picture.name}"' in page for picture in pictures)
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;fear" in page and "<img src=x" not in page
    with Image.open(pictures[0]) as image:
        width, height = image.size  # crop, overlay, colour bar and caption at 100 dpi
        assert width > 448 and height > 224
    labels = [row[LABEL] for row in across_classes(baseline.stage("cternet_eval").read_all(
        columns=[LABEL]).to_pylist(), 16)]
    classes = sorted(set(labels))
    assert len(classes) > 1 and labels[:len(classes)] == classes  # one of each class first
    with pytest.raises(UserError, match="no finished cternet_eval"):
        write_sentiment_maps(RunStore(tmp_path, "absent"), 4, tmp_path / "none")


def test_polarity_task_trains_and_evaluates_a_binary_model(fi_dir: Path, tmp_path: Path) -> None:
    """Paper Table 2: a 2-class model on the FI labels' polarity, with the paper's head."""
    store = run(tmp_path, "binary", fi_dir, task="polarity", head="features")
    positive = {"amusement", "awe", "contentment", "excitement"}
    trained = store.stage("cternet_train")
    assert trained.manifest["summary"]["classes"] == ["negative", "positive"]
    assert trained.manifest["summary"]["task"] == "polarity"
    assert trained.manifest["rows_rejected"] == 0
    rows = trained.read_all().to_pylist()
    assert all(row["target"] == ("positive" if row["label"] in positive else "negative")
               and row["class_index"] == int(row["target"] == "positive") for row in rows)
    classifier = load_classifier(trained.path, "cpu")
    assert classifier.classes == ["negative", "positive"]
    assert classifier.model.head.classifier.out_features == 2

    evaluated = store.stage("cternet_eval")
    table = evaluated.read_all().to_pandas()
    assert len(table) == 16 and set(table["label"]) == set(FI_CLASSES)
    assert (table["target"] == ["positive" if label in positive else "negative"
                                for label in table["label"]]).all()
    assert set(table["predicted"]) <= {"negative", "positive"}
    assert (table["correct"] == (table["target"] == table["predicted"])).all()
    summary = evaluated.manifest["summary"]
    assert summary["accuracy"] == pytest.approx(table["correct"].mean())
    assert summary["task"] == "polarity" and summary["grouped_polarity_accuracy"] is None
    assert summary["paper_accuracy_percent"] == 91.01
    report = (evaluated.path / "report.md").read_text()
    assert (f"| binary accuracy (2-class model trained on polarity labels) | "
            f"{100 * summary['accuracy']:.2f} | 91.01 |") in report
    assert "grouped" not in report


@pytest.mark.parametrize(("head", "classes", "noted"), [
    ("features", ["a", "b", "c"], True), ("attended", ["a", "b", "c"], False),
    ("features", ["negative", "positive"], False)])
def test_report_names_the_eq5_cap_where_it_applies(head: str, classes: list[str],
                                                   noted: bool) -> None:
    true = np.arange(len(classes))
    metrics = classification_metrics(true, true, classes)
    training = {"task": "emotion", "polarity_map": None, "classes": classes, "mode": "full",
                "head": head, "backbone": "b", "weights_source": "pretrained",
                "sentiment_map": "raw_sum", "precision": "fp32", "input_size": 448,
                "eval_crop": "shorter_side", "best_epoch": 1, "epochs": 1,
                "best_val_accuracy": 1.0}
    report = render_report(metrics, None, None, training)
    assert ("can name two classes at most" in report) == noted
    assert "No grouped polarity figure" not in report
    mapped = render_report(metrics, None, None, training | {"polarity_map": "fi"})
    assert "No grouped polarity figure: not every class has a polarity" in mapped


def test_polarity_task_rejects_labels_without_a_polarity(tmp_path: Path) -> None:
    """Emotion6's neutral has no polarity: its rows are rejects in training and evaluation."""
    data = tmp_path / "emotion6"
    rng = random.Random(5)
    for label in ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"):
        for index in range(4):
            colour = tuple(rng.randrange(256) for _ in range(3))
            write_image(data / label / f"{index}.png", colour=colour, fmt="PNG")
    store = run(tmp_path, "emotion6", data, task="polarity", polarity_map="emotion6", epochs=1)
    trained = store.stage("cternet_train").manifest
    assert trained["rejects_by_reason"] == {"no_polarity": 3}
    assert (trained["rows_in"], trained["rows_out"]) == (21, 18)
    evaluated = store.stage("cternet_eval").manifest
    assert evaluated["rejects_by_reason"] == {"no_polarity": 1}
    assert (evaluated["rows_in"], evaluated["rows_out"]) == (7, 6)
    assert evaluated["summary"]["paper_accuracy_percent"] == 83.67


@pytest.mark.parametrize(("values", "message"), [
    ({"task": "polarity"}, "task polarity needs polarity_map"),
    ({"task": "polarity", "polarity_map": "fi", "classes": ["a", "b"]}, "remove classes"),
    ({"task": "polarity", "polarity_map": "fi", "num_classes": 8}, "remove classes"),
    ({"polarity_map": "fi8"}, "polarity_map"),
    ({"head": "concat"}, "head"),
])
def test_polarity_params_are_validated_up_front(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CTERNetTrainParams(**values)


@pytest.mark.parametrize(("key", "values"), [
    ("backbone", {"backbone": ""}),
    ("crop_scale", {"crop_scale": [0.9, 0.5]}),
    ("backbone_checkpoint", {"backbone_checkpoint": "/nonexistent/backbone.pt"}),
    ("num_classes", {"classes": ["a", "b"], "num_classes": 3}),
    ("counterfactual", {"counterfactual": "inverted"}),
    ("batch_size", {"batch_size": 1}),
    ("device", {"device": "not-a-device"}),
    ("k_maps", {"k_maps": 0}),
    ("epoch", {"epoch": 3}),
])
def test_params_are_validated_with_the_key_named(key: str, values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=key):
        CTERNetTrainParams(**values)


def test_configs_hold_the_paper_recipe_and_a_runnable_demo() -> None:
    paper = yaml.safe_load((CONFIGS / "cternet_paper.yaml").read_text())
    demo = yaml.safe_load((CONFIGS / "cternet_demo.yaml").read_text())
    for config in (paper, demo):
        assert config["run"]["stages"] == ["ingest", "cternet_train", "cternet_eval"]
        assert config["ingest"]["source"] == "image_folder"
        CTERNetEvalParams(**config.get("cternet_eval") or {})
    recipe = CTERNetTrainParams(**paper["cternet_train"])
    assert (recipe.backbone, recipe.pretrained, recipe.input_size) == ("res2net101d", True, 448)
    assert (recipe.lr, recipe.momentum, recipe.step_size, recipe.lr_decay) == (1e-4, 0.9, 10, 0.1)
    defaults = CTERNetTrainParams()
    equations = ("branches", "channel_attention", "sentiment_map", "head", "eval_crop")
    assert [getattr(recipe, key) for key in equations] == [getattr(defaults, key) for key in equations]
    assert (recipe.head, recipe.sentiment_map, recipe.polarity_map) == ("features", "raw_sum", "fi")
    assert paper["ingest"]["layout"] == "split_folders"
    with pytest.raises(ValidationError, match="path does not exist"):
        IngestParams(**paper["ingest"])
    small = CTERNetTrainParams(**demo["cternet_train"])
    assert not small.pretrained and small.input_size <= 112
    assert small.head == "attended" and small.sentiment_map == defaults.sentiment_map
    assert demo["ingest"]["path"] == "artifacts/demo-data/fi"
