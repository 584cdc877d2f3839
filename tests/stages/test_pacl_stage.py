"""The `pacl` stage through the runner on the demo chain: accounting and rejects, outputs,
resume after a failure, config checks, and torchrun with two gloo processes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import timm
import torch
from PIL import Image
from pydantic import ValidationError

from affectflow.core.atomic import write_parquet
from affectflow.core.columns import column_vectors
from affectflow.core.errors import UserError
from affectflow.core.hashing import hash_file
from affectflow.core.loading import LoaderSettings
from affectflow.core.pixel_cache import PixelCache
from affectflow.core.runner import StageJob, run_stage
from affectflow.core.runs import RunStore
from affectflow.core.store import MAIN_TABLE, StageArtifact
from affectflow.models.pacl.checkpoint import load_model
from affectflow.models.pacl.model import build_visual_encoder
from affectflow.models.pacl.train import PaclTrainConfig, PaclTrainingSet, TrainHooks
from affectflow.pipelines.execution import RunRef
from affectflow.stages.pacl import worker as pacl_worker
from affectflow.stages.pacl.params import PaclParams
from affectflow.stages.pacl.stage import PaclStage
from tests.stages.helpers import record_edit
from tests.stages.pacl_upstream import run_upstream, settings

torch.set_num_threads(1)

PARAMS: dict[str, Any] = {"visual_encoder": "timm:test_resnet", "pretrained": False,
                          "image_size": 32, "embed_dim": 16, "epochs": 3,
                          "samples_per_partition": 4, "backbone_lr": 1e-3, "head_lr": 1e-2}


@pytest.fixture(scope="module")
def upstream(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunRef:
    return run_upstream(demo_dir, tmp_path_factory.mktemp("pacl"))


def run_pacl(ref: RunRef, run_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    run = RunStore(Path(ref.artifact_root), run_id or ref.run_id)
    return run_stage(StageJob(run, PaclStage(), PaclParams(**{**PARAMS, **overrides}), settings(ref)))


def copy_run(ref: RunRef, run_id: str) -> RunStore:
    """A second run holding the same upstream artifacts (same fingerprints), minus any pacl."""
    source = ref.store.path
    target = source.parent / run_id
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("pacl"))
    return RunStore(Path(ref.artifact_root), run_id)


@pytest.fixture(scope="module")
def trained(upstream: RunRef) -> dict[str, Any]:
    return run_pacl(upstream)


def test_accounting_and_rows_join_partition_and_cluster(upstream: RunRef,
                                                        trained: dict[str, Any]) -> None:
    store = upstream.store
    assert trained["rows_in"] == store.stage("ingest").num_rows()
    assert trained["rows_in"] == trained["rows_out"] + trained["rows_rejected"]
    rows = store.stage("pacl").read_all().to_pandas().set_index("sample_id")
    partition = store.stage("partition").read_all().to_pandas().set_index("sample_id")
    cluster = store.stage("cluster").read_all().to_pandas().set_index("sample_id")
    assert (rows["partition"] == partition.loc[rows.index, "partition"]).all()
    assert (rows["factual_cluster"] == cluster.loc[rows.index, "factual_k2"]).all()
    assert (rows["emotional_cluster"] == cluster.loc[rows.index, "emotional_k2"]).all()
    train_counts = rows[rows["split"] == "train"]["partition"].value_counts().to_dict()
    assert trained["summary"]["train_samples"] == {key: train_counts.get(key, 0) for key in
                                                   ("strong", "partial_emotional",
                                                    "partial_factual", "weak")}


def test_outputs_models_backbone_history_and_loss_curve(upstream: RunRef,
                                                        trained: dict[str, Any]) -> None:
    folder = upstream.store.stage("pacl").path
    model, config = load_model(folder / "model.pt")
    initial, _ = load_model(folder / "initial_model.pt")
    assert config["text_encoder"]["text_encoder"] == "packaged:all-MiniLM-L6-v2"
    assert config["image_size"] == 32 and config["visual_encoder"] == "timm:test_resnet"
    changed = [name for name, tensor in model.state_dict().items()
               if not torch.equal(tensor, initial.state_dict()[name])]
    assert "image_projection.weight" in changed and any(n.startswith("visual.") for n in changed)
    backbone = torch.load(folder / "backbone.pt", weights_only=True)
    plain = timm.create_model("test_resnet", num_classes=0)
    plain.load_state_dict(backbone)  # strict: the tower alone, timm's own key names
    loaded = build_visual_encoder(f"timm:test_resnet:{folder / 'backbone.pt'}", pretrained=True)
    for name, tensor in loaded.module.state_dict().items():
        torch.testing.assert_close(tensor, model.visual.state_dict()[name], msg=name)
    history = upstream.store.stage("pacl").read_all(table="history").to_pandas()
    summary = trained["summary"]
    assert len(history) == summary["steps"] == sum(summary["epoch_steps"])
    assert history["step"].tolist() == list(range(1, len(history) + 1))
    assert [phase["active"] for phase in summary["phases"]] == [
        ["strong"], ["strong", "partial_emotional", "partial_factual"],
        ["strong", "partial_emotional", "partial_factual", "weak"]]
    assert (history["samples_per_s"] > 0).all()
    assert (folder / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _replace_shard(artifact: StageArtifact, shard: int, table: pa.Table, side: str = MAIN_TABLE) -> None:
    write_parquet(artifact.table_dir(side) / f"part-{shard:05d}.parquet", table)
    record_edit(artifact)


def test_samples_missing_upstream_data_become_rejects(upstream: RunRef, tmp_path: Path) -> None:
    run = copy_run(upstream, "broken")
    ingest = run.stage("ingest").read_shard(0)
    train_rows = [i for i, split in enumerate(ingest["split"].to_pylist()) if split == "train"]
    victims = [ingest["sample_id"][i].as_py() for i in train_rows[:5]]
    broken_image = tmp_path / "broken.jpg"
    broken_image.write_bytes(b"\xff\xd8 not really a jpeg")
    paths, hashes = ingest["image_path"].to_pylist(), ingest["image_sha256"].to_pylist()
    paths[train_rows[0]] = str(broken_image)
    hashes[train_rows[0]] = hash_file(broken_image)
    hashes[train_rows[4]] = "0" * 64  # the file on disk is no longer the one ingest hashed
    for name, values in (("image_path", paths), ("image_sha256", hashes)):
        ingest = ingest.set_column(ingest.schema.get_field_index(name), name,
                                   pa.array(values, pa.string()))
    _replace_shard(run.stage("ingest"), 0, ingest)
    for stage, victim in (("partition", victims[1]), ("cluster", victims[2])):
        table = run.stage(stage).read_shard(0)
        keep = pa.array([sid != victim for sid in table["sample_id"].to_pylist()])
        _replace_shard(run.stage(stage), 0, table.filter(keep))
    features = run.stage("teacher").read_shard(0, table="text_features")
    vectors = column_vectors(features["text_feature"])
    vectors[features["sample_id"].to_pylist().index(victims[3])] = np.nan
    flat = pa.array(vectors.astype(np.float16).reshape(-1), pa.float16())
    _replace_shard(run.stage("teacher"), 0, features.set_column(
        1, "text_feature", pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])),
                   side="text_features")

    manifest = run_pacl(upstream, "broken", epochs=1)
    assert manifest["rejects_by_reason"] == {"image_load_failed": 1, "image_changed": 1,
                                             "no_partition": 1, "no_cluster": 1,
                                             "bad_text_feature": 1}
    assert manifest["rows_in"] == manifest["rows_out"] + 5
    rejects = run.stage("pacl").rejects().to_pandas().set_index("sample_id")
    assert rejects.loc[victims[0], "reason"] == "image_load_failed"
    assert rejects.loc[victims[4], "reason"] == "image_changed"
    assert set(run.stage("pacl").read_all()["sample_id"].to_pylist()).isdisjoint(victims)


def test_rerun_after_a_failed_training_resumes_and_matches(upstream: RunRef, trained: dict[str, Any],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy_run(upstream, "resumed")
    original = pacl_worker.train_pacl

    def fail_after_first_epoch(*args: Any, **kwargs: Any) -> Any:
        def fail(epoch: int) -> None:
            raise RuntimeError("injected failure")
        return original(*args[:5], hooks=TrainHooks(on_epoch_end=fail))

    monkeypatch.setattr(pacl_worker, "train_pacl", fail_after_first_epoch)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_pacl(upstream, "resumed")
    assert run.read()["stages"]["pacl"]["status"] == "failed"
    monkeypatch.setattr(pacl_worker, "train_pacl", original)
    manifest = run_pacl(upstream, "resumed")
    assert manifest["fingerprint"] == trained["fingerprint"]
    assert manifest["summary"]["resumed_at_step"] == manifest["summary"]["epoch_steps"][0]
    resumed = torch.load(run.stage("pacl").path / "backbone.pt", weights_only=True)
    reference = torch.load(upstream.store.stage("pacl").path / "backbone.pt", weights_only=True)
    for name, tensor in resumed.items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=1e-6, msg=name)


def test_defaults_are_the_papers() -> None:
    """Loss weights and candidates as the paper, backbone lr per architecture (PACL Sec. 4.2)."""
    params = PaclParams()
    assert params.weights().in_partition_order() == (1.0, 1.0, 1.0, 1.0)
    assert params.candidates == "partition"
    assert PaclParams(loss_weights="public_code").train_config().loss_weights == (1.0, 0.6, 0.6, 0.1)
    assert PaclParams(loss_weights={"weak": 0.5}).weights().in_partition_order() == (1.0, 1.0, 1.0, 0.5)
    lrs = {spec: PaclParams(visual_encoder=spec).train_config().backbone_lr
           for spec in ("timm:resnet50", "timm:resnet50.a1_in1k", "timm:hf-hub:timm/resnet50.a1_in1k",
                        "timm:vit_base_patch16_224.augreg2_in21k_ft_in1k", "timm:swin_base_patch4_window7_224",
                        "open_clip:ViT-B-32:openai")}
    assert lrs == {"timm:resnet50": 1e-3, "timm:resnet50.a1_in1k": 1e-3, "timm:hf-hub:timm/resnet50.a1_in1k": 1e-3,
                   "timm:vit_base_patch16_224.augreg2_in21k_ft_in1k": 1e-5,
                   "timm:swin_base_patch4_window7_224": 2e-5, "open_clip:ViT-B-32:openai": 1e-5}
    assert PaclParams().head_lr == 1e-3
    assert PaclParams(visual_encoder="timm:convnext_tiny", backbone_lr=3e-4).train_config().backbone_lr == 3e-4


def test_params_are_checked_before_any_work(upstream: RunRef, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="extra"):
        PaclParams(epoch=3)
    with pytest.raises(ValidationError, match="no family prefix"):
        PaclParams(visual_encoder="resnet50")
    with pytest.raises(ValidationError, match="model path does not exist"):
        PaclParams(visual_encoder=f"open_clip:local-dir:{tmp_path / 'missing'}")
    with pytest.raises(ValidationError, match="names no pretrained weights"):
        PaclParams(visual_encoder="open_clip:ViT-B-32")
    with pytest.raises(ValidationError, match="multiple of processes"):
        PaclParams(samples_per_partition=3, processes=2)
    with pytest.raises(ValidationError, match="unknown partitions"):
        PaclParams(loss_weights={"strongest": 1.0})
    with pytest.raises(ValidationError, match="loss_weights"):
        PaclParams(loss_weights="public")
    with pytest.raises(ValidationError, match="candidates"):
        PaclParams(candidates="global")
    with pytest.raises(ValidationError, match="backbone_lr is not set"):
        PaclParams(visual_encoder="timm:convnext_tiny")
    copy_run(upstream, "wrong_k")
    with pytest.raises(UserError, match=r"pacl.k=5"):
        run_pacl(upstream, "wrong_k", k=5)


# ---------------------------------------------------------------- torchrun
def write_training_images(folder: Path, count: int) -> list[tuple[str, str]]:
    """(path, sha256) of `count` random PNGs."""
    generator = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(count):
        pixels = generator.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        path = folder / f"{index:03d}.png"
        Image.fromarray(pixels).save(path)
        images.append((str(path), hash_file(path)))
    return images


def test_two_gloo_processes_match_one_process_on_the_same_global_batches(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    partitions = torch.tensor([0] * 8 + [1] * 4 + [2] * 4 + [3] * 4)
    data = PaclTrainingSet(torch.randn(20, 12, generator=generator), partitions,
                           torch.randint(0, 2, (20,), generator=generator),
                           torch.randint(0, 2, (20,), generator=generator))
    images = write_training_images(tmp_path / "images", 20)
    # ConvNeXt has no BatchNorm, so ranks see exactly what one process sees.
    config = PaclTrainConfig("timm:test_convnext", pretrained=False, embed_dim=8, image_size=32,
                             epochs=3, samples_per_partition=2, backbone_lr=1e-3, head_lr=1e-2)
    results = {}
    for processes in (1, 2):
        # A fresh cache each time: the two ranks fill the same one at once.
        loading = LoaderSettings(1, PixelCache(tmp_path / f"cache{processes}", 10**9))
        job = pacl_worker.write_job(tmp_path / f"job{processes}", config, images, data, loading,
                                    device="cpu", cpu_threads=1)
        results[processes] = pacl_worker.launch(job.folder, processes)
    single, double = results[1], results[2]
    assert single["history"]["active"] == double["history"]["active"]
    for column in ("loss", "loss_strong", "loss_weak", "grad_norm"):
        assert double["history"][column] == pytest.approx(single["history"][column], rel=1e-4,
                                                          abs=1e-5, nan_ok=True), column
    for name, tensor in double["state_dict"].items():
        torch.testing.assert_close(tensor, single["state_dict"][name], rtol=1e-4, atol=1e-4, msg=name)
