"""The cluster stage: faiss k-means on every point, reproducible, a K sweep without re-encoding,
rejects for samples missing upstream, plan-time K checks and the ARI report on the demo."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from pydantic import ValidationError
from sklearn.metrics import adjusted_rand_score
from torchvision.transforms.v2 import functional as TF

from affectflow.core.atomic import write_json, write_parquet
from affectflow.core.columns import column_vectors, vector_column
from affectflow.core.errors import UserError
from affectflow.core.hashing import hash_file, hash_value
from affectflow.core.images import load_rgb
from affectflow.core.runner import StageJob, run_stage
from affectflow.core.runs import RunStore
from affectflow.core.store import MANIFEST, StageArtifact, shard_name
from affectflow.models.pacl import model as pacl_model
from affectflow.models.pacl.augment import load_size
from affectflow.models.pacl.model import build_visual_encoder
from affectflow.pipelines.config import RunSettings, load_config
from affectflow.stages.cluster.features import feature_part
from affectflow.stages.cluster.inputs import align_shard
from affectflow.stages.cluster.kmeans import kmeans, l2_normalise
from affectflow.stages.cluster.stage import ClusterParams, ClusterStage
from affectflow.stages.partition.stage import PartitionParams, PartitionStage
from tests.stages.helpers import demo_config, record_edit, run_stages

KS = [2, 3, 7]


# ---------------------------------------------------------------- k-means on synthetic points

def separated_clusters(k: int, per_cluster: int, dim: int, noise: float,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around k orthogonal directions, and each point's true cluster."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:k]
    truth = np.repeat(np.arange(k), per_cluster)
    points = directions[truth] + noise * rng.normal(size=(len(truth), dim))
    return l2_normalise(points), truth


def test_same_seed_gives_the_same_labels_and_another_seed_is_accepted() -> None:
    points, _ = separated_clusters(5, 80, 16, noise=0.4)
    first, second = kmeans(points, 5, niter=20, seed=3), kmeans(points, 5, niter=20, seed=3)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.centroids, second.centroids)
    assert first.labels.dtype == np.int32 and sum(first.sizes) == len(points)
    assert kmeans(points, 5, niter=20, seed=4).labels.shape == first.labels.shape


def test_every_point_is_used_where_faiss_would_sample(caplog: pytest.LogCaptureFixture) -> None:
    """Spherical centroids equal the normalised mean of ALL points assigned to them; faiss's
    default (256 points per centroid) gives visibly different ones on the same data."""
    points, _ = separated_clusters(2, 1500, 8, noise=0.5)
    with caplog.at_level(logging.INFO, logger="affectflow.stages.cluster"):
        result = kmeans(points, 2, niter=25, seed=0)
    assert "would train on a sample of 512 of 3000 points" in caplog.text
    full_means = l2_normalise(np.stack([points[result.labels == j].mean(axis=0) for j in (0, 1)]))
    np.testing.assert_allclose(result.centroids, full_means, atol=1e-5)

    sampled = faiss.Kmeans(8, 2, niter=25, seed=0, spherical=True)
    sampled.train(points)
    _, sampled_labels = sampled.assign(points)
    sampled_means = l2_normalise(np.stack([points[sampled_labels == j].mean(axis=0)
                                           for j in (0, 1)]))
    assert np.abs(sampled.centroids - sampled_means).max() > 1e-3


@pytest.mark.parametrize("k", [2, 6, 10])
def test_spherical_kmeans_recovers_well_separated_clusters(k: int) -> None:
    points, truth = separated_clusters(k, 40, 32, noise=0.02, seed=k)
    result = kmeans(points, k, niter=25, seed=0)
    assert adjusted_rand_score(truth, result.labels) == 1.0
    assert result.sizes == [40] * k
    expected = sum(float(((points[result.labels == j] - c) ** 2).sum())
                   for j, c in enumerate(result.centroids))
    assert result.inertia == pytest.approx(expected, rel=1e-6)


def test_align_shard_keeps_complete_samples_and_rejects_the_rest_with_reasons() -> None:
    ids = [f"s{i}" for i in range(6)]
    listing = pa.table({"sample_id": ids, "source_id": [f"p{i}" for i in range(6)]})
    image = np.arange(1, 25, dtype=np.float16).reshape(6, 4)
    image_part = feature_part(ids, {i: image[i] for i in (0, 1, 2, 3, 5)}, {4: "OSError: bad"}, 4)
    text = np.ones((5, 3), dtype=np.float32)
    text[2] = np.nan                                   # s3: a non-finite text feature
    text_table = pa.table({"sample_id": ["s0", "s2", "s3", "s4", "s5"],
                           "text_feature": vector_column(text)})
    partition = pa.table({"sample_id": ["s5", "s4", "s3", "s0"]})  # s2 missing, other order

    aligned = align_shard(listing, image_part, text_table, partition)
    assert aligned.rows_in == 6 and aligned.sample_ids == ["s0", "s5"]
    assert aligned.source_ids == ["p0", "p5"]
    np.testing.assert_array_equal(aligned.image, image[[0, 5]].astype(np.float32))
    np.testing.assert_array_equal(aligned.text, text[[0, 4]])
    assert {r["sample_id"]: r["reason"] for r in aligned.rejects} == {
        "s1": "missing_text_feature", "s2": "missing_partition",
        "s3": "degenerate_feature", "s4": "image_load_failed"}
    assert [r["detail"] for r in aligned.rejects if r["sample_id"] == "s4"] == ["OSError: bad"]


# ---------------------------------------------------------------- the stage on the demo

@dataclass(frozen=True)
class ScoredRun:
    """A demo run with ingest, factual, emotional, teacher and partition finished."""

    store: RunStore
    settings: RunSettings
    clip_dir: Path
    truth: Path


@pytest.fixture(scope="module")
def scored(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ScoredRun:
    root = tmp_path_factory.mktemp("cluster")
    raw = demo_config(demo_dir, root)
    ref = run_stages(raw, ["ingest", "factual", "emotional", "teacher"])
    settings = load_config(None, raw=raw).run
    run_stage(StageJob(ref.store, PartitionStage(), PartitionParams(), settings))
    return ScoredRun(ref.store, settings, demo_dir / "models" / "clip",
                     demo_dir / "ground_truth.csv")


def run_cluster(run: ScoredRun, force: bool = False, **params: Any) -> dict[str, Any]:
    values = {"visual_encoder": f"open_clip:local-dir:{run.clip_dir}", "ks": KS, **params}
    return run_stage(StageJob(run.store, ClusterStage(), ClusterParams(**values), run.settings),
                     force=force)


@pytest.fixture(scope="module")
def clustered(scored: ScoredRun) -> dict[str, Any]:
    return run_cluster(scored, ground_truth=scored.truth)


def copy_run(run: ScoredRun, root: Path) -> ScoredRun:
    """The scored run under a new artifact root (so with an empty feature cache)."""
    store = RunStore(root, run.store.run_id)
    shutil.copytree(run.store.path, store.path)
    return ScoredRun(store, run.settings.model_copy(update={"artifact_root": root}),
                     run.clip_dir, run.truth)


def rewrite_shard(artifact: StageArtifact, shard_id: int, table: pa.Table,
                  table_name: str = "main") -> None:
    """Replace one shard of a finished stage and give the stage a new fingerprint."""
    write_parquet(artifact.table_dir(table_name) / shard_name(shard_id), table)
    manifest = artifact.manifest
    manifest["fingerprint"] = hash_value([manifest["fingerprint"], shard_id, table.num_rows])
    write_json(artifact.path / MANIFEST, manifest)
    record_edit(artifact)


def test_one_int32_column_per_side_and_k_and_accounting_closes(scored: ScoredRun,
                                                                clustered: dict[str, Any]) -> None:
    assert clustered["schema"] == [["sample_id", "string"]] + [
        [f"{side}_k{k}", "int32"] for side in ("factual", "emotional") for k in KS]
    labels = scored.store.stage("cluster").read_all().to_pandas()
    partition = scored.store.stage("partition").read_all(columns=["sample_id"]).to_pandas()
    assert set(labels["sample_id"]) == set(partition["sample_id"])
    assert clustered["rows_in"] == clustered["rows_out"] == len(labels)
    for side in ("factual", "emotional"):
        for k in KS:
            counts = labels[f"{side}_k{k}"].value_counts()
            assert set(counts.index) <= set(range(k))
            assert clustered["summary"][side]["by_k"][str(k)]["sizes"] == \
                [int(counts.get(j, 0)) for j in range(k)]
            assert clustered["summary"][side]["by_k"][str(k)]["inertia"] > 0


def test_rerun_with_the_same_seed_gives_the_same_labels(scored: ScoredRun,
                                                        clustered: dict[str, Any]) -> None:
    first = scored.store.stage("cluster").read_all().to_pandas()
    run_cluster(scored, force=True, ground_truth=scored.truth)
    second = scored.store.stage("cluster").read_all().to_pandas()
    pd.testing.assert_frame_equal(first, second)


def test_image_features_equal_a_direct_forward_pass(scored: ScoredRun,
                                                    clustered: dict[str, Any]) -> None:
    side = scored.store.stage("cluster").read_all(table="image_features").to_pandas().head(6)
    ingest = scored.store.stage("ingest").read_all(["sample_id", "image_path"]).to_pandas()
    paths = side.merge(ingest, on="sample_id")["image_path"]
    backbone = build_visual_encoder(f"open_clip:local-dir:{scored.clip_dir}")
    size = min(backbone.image_size)

    def view(path: str) -> torch.Tensor:
        """PACL's centre view: shorter side to load_size(size), centre crop to size."""
        square = TF.resize(TF.pil_to_tensor(load_rgb(path)), [load_size(size)], antialias=True,
                           interpolation=TF.InterpolationMode.BICUBIC)
        crop = TF.center_crop(square, [size, size]).float() / 255
        return TF.normalize(crop, list(backbone.mean), list(backbone.std))

    with torch.no_grad():
        direct = backbone.module.eval()(torch.stack([view(p) for p in paths]))
    expected = torch.nn.functional.normalize(direct, dim=-1).numpy()
    stored = column_vectors(pa.array(side["image_feature"].tolist(),
                                     pa.list_(pa.float16(), expected.shape[1])))
    np.testing.assert_allclose(stored, expected, atol=2e-3)


def test_changing_k_reuses_the_cached_image_features(scored: ScoredRun, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[str] = []

    def counting_build(spec: str, pretrained: bool = True) -> Any:
        builds.append(spec)
        return build_visual_encoder(spec, pretrained)

    # the feature encoder imports its builder when it loads (stage modules import no torch)
    monkeypatch.setattr(pacl_model, "build_visual_encoder", counting_build)
    run = copy_run(scored, tmp_path)
    first = run_cluster(run, ks=[2])
    features = run.store.stage("cluster").read_all(table="image_features").to_pandas()
    second = run_cluster(run, ks=[2, 5])
    assert len(builds) == 1
    assert first["summary"]["feature_cache"]["images_encoded"] == first["rows_in"]
    assert second["summary"]["feature_cache"] == {**first["summary"]["feature_cache"],
                                                  "images_encoded": 0}
    assert first["fingerprint"] != second["fingerprint"]
    again = run.store.stage("cluster").read_all(table="image_features").to_pandas()
    assert again["sample_id"].tolist() == features["sample_id"].tolist()
    assert all((a == b).all() for a, b in zip(again["image_feature"], features["image_feature"]))
    run_cluster(run, ks=[2, 5], pretrained=False, visual_encoder="timm:resnet18")
    assert builds[-1] == "timm:resnet18"


def test_samples_missing_upstream_become_rejects_with_reasons(scored: ScoredRun,
                                                              tmp_path: Path) -> None:
    run = copy_run(scored, tmp_path)
    ingest, teacher, partition = (run.store.stage(name)
                                  for name in ("ingest", "teacher", "partition"))
    ids = ingest.read_shard(0, ["sample_id"])["sample_id"].to_pylist()
    no_text, no_partition, broken_image = ids[0], ids[1:3], ids[3]

    text = teacher.read_shard(0, table="text_features")
    rewrite_shard(teacher, 0, text.filter(pc.invert(
        pc.is_in(text["sample_id"], pa.array([no_text])))), "text_features")
    kept = partition.read_shard(0)
    rewrite_shard(partition, 0, kept.filter(pc.invert(
        pc.is_in(kept["sample_id"], pa.array(no_partition)))))
    listing = ingest.read_shard(0).to_pandas()
    bad_file = tmp_path / "not-an-image.jpg"
    bad_file.write_bytes(b"no pixels here")
    listing.loc[listing["sample_id"] == broken_image, ["image_path", "image_sha256"]] = \
        [str(bad_file), hash_file(bad_file)]  # the bytes ingest saw, which do not decode
    rewrite_shard(ingest, 0, pa.Table.from_pandas(listing, schema=ingest.read_shard(0).schema))

    manifest = run_cluster(run, ks=[2])
    assert manifest["rejects_by_reason"] == {"missing_text_feature": 1, "missing_partition": 2,
                                             "image_load_failed": 1}
    assert manifest["rows_in"] == manifest["rows_out"] + 4
    cluster = run.store.stage("cluster")
    rejects = cluster.rejects().to_pandas().set_index("sample_id")
    assert rejects.loc[broken_image, "detail"].startswith("UnidentifiedImageError")
    out_ids = set(cluster.read_all(columns=["sample_id"])["sample_id"].to_pylist())
    assert out_ids.isdisjoint(rejects.index)
    side = cluster.read_all(columns=["sample_id"], table="image_features")
    assert set(side["sample_id"].to_pylist()) == out_ids


def test_k_larger_than_the_samples_fails_before_any_encoding(scored: ScoredRun,
                                                             tmp_path: Path) -> None:
    run = copy_run(scored, tmp_path)
    samples = run.store.stage("partition").num_rows()
    with pytest.raises(UserError, match=rf"cluster.ks \[{samples + 1}\] exceed the {samples}"):
        run_cluster(run, ks=[2, samples + 1])
    assert not (tmp_path / "cache" / "features").exists()


def test_adjusted_rand_index_on_the_demo_matches_sklearn(scored: ScoredRun,
                                                         clustered: dict[str, Any]) -> None:
    summary = clustered["summary"]
    labels = scored.store.stage("cluster").read_all().to_pandas()
    ingest = scored.store.stage("ingest").read_all(["sample_id", "source_id"]).to_pandas()
    truth = pd.read_csv(scored.truth, dtype={"source_id": str})
    rows = labels.merge(ingest, on="sample_id").merge(truth, on="source_id")
    assert summary["ground_truth"]["labelled_samples"] == len(rows) == len(labels)
    for side, planted in (("factual", "emotion"), ("emotional", "text_emotion")):
        for k in KS:
            reported = summary[side]["by_k"][str(k)]["ari"]
            assert reported == pytest.approx(adjusted_rand_score(rows[planted],
                                                                 rows[f"{side}_k{k}"]))
    # The demo paints each planted emotion with its own palette: image clusters follow it.
    assert max(summary["factual"]["by_k"][str(k)]["ari"] for k in KS) > 0.1
    assert (scored.store.stage("cluster").path / "figures" / "cluster_sweep.png").stat().st_size


@pytest.mark.parametrize("values, key, message", [
    ({"ks": [2, 2]}, "ks", "repeats a value"),
    ({"ks": [1, 3]}, "ks", "below 2"),
    ({"ks": []}, "ks", "is empty"),
    ({"visual_encoder": "resnet50"}, "visual_encoder", "no family prefix"),
    ({"visual_encoder": "open_clip:local-dir:/no/such/dir"}, "visual_encoder", "does not exist"),
    ({"ground_truth": "/no/such.csv"}, "ground_truth", "does not exist"),
    ({"visual_encoder": "open_clip:ViT-B-32"}, None, "names no pretrained weights"),
    ({"niter": 0}, "niter", "greater than or equal to 1"),
])
def test_bad_params_are_rejected_naming_the_key(values: dict[str, Any], key: str | None,
                                                message: str) -> None:
    with pytest.raises(ValidationError, match=message) as error:
        ClusterParams(**values)
    assert error.value.errors()[0]["loc"] == ((key,) if key else ())


def test_ks_are_sorted_so_their_order_does_not_change_the_fingerprint() -> None:
    assert ClusterParams(ks=[10, 2, 6]).ks == [2, 6, 10]
