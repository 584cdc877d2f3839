"""The `probe` stage end to end on tiny data: every task kind (single-label on an FI-style folder,
multi-label + VAD regression on the demo's Emotic-style manifest, hierarchical on its
WebEmo-style one) under linear evaluation, fine-tuning and per-prompt zero-shot through the
teacher the PACL model was trained against; the tables agree with the predictions, test rows feed
nothing but test metrics, and one PACL run serves the downstream runs through `probe.pacl_from`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from affectflow.core.hashing import hash_value
from affectflow.core.runner import StageJob, run_stage
from affectflow.demo.scenes import demo_hierarchy
from affectflow.models.pacl.checkpoint import load_model
from affectflow.models.specs import packaged_model_path
from affectflow.models.text_encoder import load_text_encoder
from affectflow.pipelines.execution import RunRef
from affectflow.stages.metrics import multilabel_metrics
from affectflow.stages.pacl.params import PaclParams
from affectflow.stages.pacl.stage import PaclStage
from affectflow.stages.probe.params import ProbeParams
from affectflow.stages.probe.stage import ProbeStage
from affectflow.stages.probe.zeroshot import PAPER_PROMPTS
from tests.stages.helpers import run_stages
from tests.stages.pacl_upstream import run_upstream, settings, write_labelled_folder

MINILM = str(packaged_model_path("all-MiniLM-L6-v2"))

torch.set_num_threads(1)


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
                         finetune_epochs=1, finetune_batch_size=16, finetune_backbone_lr=1e-4)
    return ref, run_stage(StageJob(ref.store, ProbeStage(), params, settings(ref)))


FI_EVALUATIONS = ["linear", "zero_shot/p1", "zero_shot/p2", "finetune"]


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
    assert len(predictions) == test_count * len(FI_EVALUATIONS) * 2  # x before/after
    assert manifest["summary"]["splits"]["test"] == test_count


def test_before_after_table_in_summary_and_markdown(probed: tuple[RunRef, dict[str, Any]]) -> None:
    ref, manifest = probed
    summary = manifest["summary"]
    accuracy = [row for row in summary["table"] if row["metric"] == "Acc"]
    assert [row["evaluation"] for row in accuracy] == FI_EVALUATIONS
    assert {row["task"] for row in summary["table"]} == {"single_label"}
    predictions = ref.store.stage("probe").read_all(table="predictions").to_pandas()
    for row in accuracy:
        for encoder in ("before", "after"):
            chosen = predictions[(predictions["evaluation"] == row["evaluation"])
                                 & (predictions["encoder"] == encoder)]
            assert row[encoder] == pytest.approx((chosen["label"] == chosen["predicted"]).mean())
        assert row["delta"] == pytest.approx(row["after"] - row["before"])
    markdown = (ref.store.stage("probe").path / "results.md").read_text()
    for title in ("## Single-label classification (8 classes)", "| Linear probe |",
                  '| Zero-shot "A photo with [C] emotion." |',
                  '| Zero-shot "The photo makes me feel so [C]!" |', "| Fine-tuning |",
                  "Acc before", "Acc after", "wF1 before"):
        assert title in markdown
    for name in summary["tasks"]["single_label"]["classes"]:
        assert f"| {name} |" in markdown
    for figure in summary["files"][1:]:
        assert (ref.store.stage("probe").path / figure).read_bytes()[:4] == b"\x89PNG"
    assert summary["details"]["single_label"]["linear"]["after"]["best_epoch"] in range(1, 6)


def test_zero_shot_scores_each_paper_prompt_alone_with_the_teacher_text_encoder(
        probed: tuple[RunRef, dict[str, Any]]) -> None:
    ref, manifest = probed
    classes = manifest["summary"]["tasks"]["single_label"]["classes"]
    model, config = load_model(ref.store.stage("pacl").path / "model.pt")
    assert config["text_encoder"]["pooling"] == "cls"
    assert ref.store.stage("emotional").manifest["params"]["pooling"] == "mean"
    encoder = load_text_encoder(MINILM, pooling="cls")
    features = ref.store.stage("probe").read_all(table="features").to_pandas().set_index("sample_id")
    predictions = ref.store.stage("probe").read_all(table="predictions").to_pandas()
    for index, template in enumerate(PAPER_PROMPTS):
        class_embeddings = model.encode_text(encoder.encode([template.format(n) for n in classes]))
        chosen = predictions[(predictions["evaluation"] == f"zero_shot/p{index + 1}")
                             & (predictions["encoder"] == "after")]
        vectors = torch.tensor(np.stack(features.loc[chosen["sample_id"], "after"].to_numpy()))
        with torch.no_grad():
            images = torch.nn.functional.normalize(model.image_projection(vectors), dim=-1)
            expected = (images @ class_embeddings.T).argmax(dim=1)
        assert chosen["predicted"].tolist() == [classes[i] for i in expected.tolist()]


# ---------------------------------------------------------------- the other task kinds
DOWNSTREAM: dict[str, Any] = {"evaluations": ["linear", "finetune", "zero_shot"], "linear_epochs": 3,
                              "finetune_epochs": 1, "finetune_batch_size": 16,
                              "finetune_backbone_lr": 1e-4,  # timm's test ResNet is not in the paper's table
                              "zero_shot_ensemble": True, "cpu_threads": 1}


def downstream_run(probed: tuple[RunRef, dict[str, Any]], run_id: str, probe_ingest: dict[str, Any],
                   probe: dict[str, Any]) -> RunRef:
    """A run of probe_ingest + probe only, on the PACL model of the `probed` run, through the
    config path (so the stage order and cross-stage checks run)."""
    ref, _ = probed
    raw = {"run": {"artifact_root": ref.artifact_root, "workers": 2,
                   "stages": ["probe_ingest", "probe"]},
           "probe_ingest": {"shard_size": 32, "require_text": False, **probe_ingest},
           "probe": {"pacl_from": str(ref.store.stage("pacl").path), **DOWNSTREAM, **probe}}
    return run_stages(raw, ["probe_ingest", "probe"], run_id=run_id)


@pytest.fixture(scope="module")
def emotic(probed: tuple[RunRef, dict[str, Any]], demo_dir: Path) -> RunRef:
    return downstream_run(probed, "emotic", {
        "source": "manifest", "path": str(demo_dir / "emotic" / "manifest.csv"),
        "dataset_name": "demo-emotic", "columns": {"label_set": "categories"},
        "labels": ["Angry", "Bored", "Calm", "Fear", "Happy", "Love", "Sad"],
        "targets": ["valence", "arousal", "dominance"], "target_range": [1, 10]},
        {"tasks": ["multi_label", "regression"]})


@pytest.fixture(scope="module")
def webemo(probed: tuple[RunRef, dict[str, Any]], demo_dir: Path) -> RunRef:
    return downstream_run(probed, "webemo", {
        "source": "manifest", "path": str(demo_dir / "webemo" / "manifest.csv"),
        "dataset_name": "demo-webemo", "val_from_train": 0.1, "hierarchy": demo_hierarchy()},
        {"tasks": ["hierarchical"]})


def _predictions(ref: RunRef, task: str) -> pd.DataFrame:
    table = ref.store.stage("probe").read_all(table="predictions").to_pandas()
    return table[table["task"] == task]


def _table(ref: RunRef, task: str, metric: str) -> dict[tuple[str, str | None], dict[str, float]]:
    summary = ref.store.stage("probe").manifest["summary"]
    return {(row["evaluation"], row["level"]): row for row in summary["table"]
            if row["task"] == task and row["metric"] == metric}


def test_emotic_style_bad_cells_are_rejects_and_accounting_closes(emotic: RunRef,
                                                                  probed: tuple[RunRef, dict[str, Any]]) -> None:
    ingest = emotic.store.stage("probe_ingest")
    rejects = ingest.rejects().to_pandas()
    assert dict(zip(rejects["source_id"], rejects["reason"])) == {
        "00000": "unknown_label", "00001": "target_out_of_range", "00002": "missing_target"}
    manifest = emotic.store.stage("probe").manifest
    assert manifest["rows_in"] == ingest.num_rows() == manifest["rows_out"] + manifest["rows_rejected"]
    # another run's PACL model: not an input of this run, its fingerprint is the source's
    assert list(manifest["inputs"]) == ["probe_ingest"]
    pacl = probed[0].store.stage("pacl")
    assert manifest["source_fingerprint"] == hash_value([pacl.fingerprint, pacl.digest])


def test_multi_label_table_is_the_map_and_auc_of_the_test_predictions(emotic: RunRef) -> None:
    predictions = _predictions(emotic, "multi_label")
    rows = emotic.store.stage("probe").read_all().to_pandas().set_index("sample_id")
    assert set(rows.loc[predictions["sample_id"], "split"]) == {"test"}
    categories = emotic.store.stage("probe").manifest["summary"]["tasks"]["multi_label"]["categories"]
    keys = ["linear", "finetune", "zero_shot/p1", "zero_shot/p2", "zero_shot/ensemble"]
    assert sorted(set(predictions["evaluation"])) == sorted(keys)
    table = _table(emotic, "multi_label", "mAP")
    for key in keys:
        for encoder in ("before", "after"):
            chosen = predictions[(predictions["evaluation"] == key) & (predictions["encoder"] == encoder)]
            truth = np.array([[int(c in label.split(";")) for c in categories] for label in chosen["label"]])
            scores = np.stack(chosen["scores"].to_numpy())
            expected = multilabel_metrics(truth, scores, categories).mean_average_precision
            assert table[(key, None)][encoder] == pytest.approx(expected)


def test_regression_table_is_the_mse_of_the_test_predictions_on_the_data_scale(emotic: RunRef) -> None:
    predictions = _predictions(emotic, "regression")
    assert set(predictions["evaluation"]) == {"linear", "finetune"}  # nothing to prompt
    targets = emotic.store.stage("probe_ingest").read_all(["sample_id", "targets"]).to_pandas()
    truth_of = dict(zip(targets["sample_id"], targets["targets"]))
    table = _table(emotic, "regression", "MSE")
    for (key, _), row in table.items():
        for encoder in ("before", "after"):
            chosen = predictions[(predictions["evaluation"] == key) & (predictions["encoder"] == encoder)]
            truth = np.stack([truth_of[sample] for sample in chosen["sample_id"]])
            predicted = np.stack(chosen["scores"].to_numpy())
            assert 1 <= predicted.mean() <= 10  # predictions are on the data's 1-10 scale
            assert row[encoder] == pytest.approx(float(((truth - predicted) ** 2).mean()), rel=1e-5)
    markdown = (emotic.store.stage("probe").path / "results.md").read_text()
    for text in ("## Multi-label classification (7 categories)", "mAP before", "AUC after",
                 "Zero-shot, ensemble of 2 prompts", "## Regression (valence, arousal, dominance)",
                 "MSE before", "Δ MSE (lower is better)", "R² after",
                 "Zero-shot: not defined for regression", "| valence |"):
        assert text in markdown


def test_webemo_style_split_keeps_test_and_carves_val_from_train(webemo: RunRef, demo_dir: Path) -> None:
    given = pd.read_csv(demo_dir / "webemo" / "manifest.csv", dtype=str).set_index("id")["split"]
    rows = webemo.store.stage("probe_ingest").read_all(["source_id", "split"]).to_pandas()
    split_of = dict(zip(rows["source_id"], rows["split"]))
    assert {source for source, split in split_of.items() if split == "test"} == \
        set(given[given == "test"].index)
    val = [source for source, split in split_of.items() if split == "val"]
    assert val and all(given[source] == "train" for source in val)
    assert len(val) == 14  # one per mood: round(7 train images x 0.1)


def test_hierarchical_rows_per_level_and_the_table_agrees_with_them(webemo: RunRef) -> None:
    predictions = _predictions(webemo, "hierarchical")
    summary = webemo.store.stage("probe").manifest["summary"]
    levels = summary["tasks"]["hierarchical"]["levels"]
    assert {name: len(classes) for name, classes in levels.items()} == {"polarity": 2, "emotion": 7,
                                                                         "mood": 14}
    test_count = summary["splits"]["test"]
    assert len(predictions) == test_count * 3 * 5 * 2  # levels x evaluations x encoders
    parents = {mood: (polarity, emotion) for polarity, emotions in demo_hierarchy()[0]["groups"].items()
               for emotion in emotions for mood in demo_hierarchy()[1]["groups"][emotion]}
    truth = predictions.pivot_table(index=["sample_id", "evaluation", "encoder"], columns="level",
                                    values="label", aggfunc="first")
    assert all(parents[row.mood] == (row.polarity, row.emotion) for row in truth.itertuples())
    table = _table(webemo, "hierarchical", "Acc")
    assert {level for _, level in table} == set(levels)
    for (key, level), row in table.items():
        for encoder in ("before", "after"):
            chosen = predictions[(predictions["evaluation"] == key) & (predictions["encoder"] == encoder)
                                 & (predictions["level"] == level)]
            assert row[encoder] == pytest.approx((chosen["label"] == chosen["predicted"]).mean())
    markdown = (webemo.store.stage("probe").path / "results.md").read_text()
    for text in ("## Hierarchical classification (polarity 2 → emotion 7 → mood 14; per-level head)",
                 "| Linear probe | polarity |", "| Fine-tuning | mood |", "| Level |"):
        assert text in markdown
    assert sum(f.startswith("confusion/hierarchical/") for f in summary["files"]) == 5 * 3
