"""`factual` and `emotional` stages: equal to direct computations, deterministic, robust."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from affectflow.core.columns import column_vectors
from affectflow.core.errors import UserError
from affectflow.core.images import load_rgb
from affectflow.models.anp import AnpScorer, load_anp_vocabulary
from affectflow.models.clip import load_clip
from affectflow.models.specs import packaged_model_path
from affectflow.models.text_encoder import load_text_encoder
from affectflow.pipelines.execution import RunRef
from tests.stages.helpers import demo_config, run_stages

MINILM = str(packaged_model_path("all-MiniLM-L6-v2"))

CHAIN = ["ingest", "factual", "emotional"]


@pytest.fixture(scope="module")
def scored(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunRef:
    root = tmp_path_factory.mktemp("scored")
    return run_stages(demo_config(demo_dir, root), CHAIN)


def joined(ref: RunRef) -> pd.DataFrame:
    ingest = ref.store.stage("ingest").read_all().to_pandas()
    factual = ref.store.stage("factual").read_all().to_pandas()
    emotional = ref.store.stage("emotional").read_all().to_pandas()
    return ingest.merge(factual, on="sample_id").merge(emotional, on="sample_id")


def test_factual_score_equals_a_direct_open_clip_computation(scored: RunRef, demo_dir: Path) -> None:
    rows = joined(scored).head(6)
    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{demo_dir / 'models' / 'clip'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{demo_dir / 'models' / 'clip'}")
    model.eval()
    with torch.no_grad():
        images = torch.stack([preprocess(load_rgb(p)) for p in rows["image_path"]])
        image = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(tokenizer(list(rows["text"]))), dim=-1)
    expected = (image * text).sum(-1).numpy()
    np.testing.assert_allclose(rows["factual_score"].to_numpy(), expected, atol=1e-5)


def test_embeddings_side_table_is_float16_fixed_size_and_normalised(scored: RunRef) -> None:
    side = scored.store.stage("factual").read_all(table="embeddings")
    vector_type = side.schema.field("image_embedding").type
    assert vector_type.list_size == 64 and str(vector_type.value_type) == "halffloat"
    vectors = column_vectors(side["image_embedding"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)
    assert side.num_rows == scored.store.stage("factual").num_rows()


def test_emotional_score_equals_minilm_on_anps_and_post(scored: RunRef, demo_dir: Path) -> None:
    rows = joined(scored).head(5)
    assert all(len(anps) == 3 for anps in rows["anps"])
    assert list(rows["anp_text"]) == [", ".join(a) for a in rows["anps"]]
    encoder = load_text_encoder(MINILM)
    anp = encoder.encode(list(rows["anp_text"])).numpy()
    post = encoder.encode(list(rows["text"])).numpy()
    np.testing.assert_allclose(rows["emotional_score"].to_numpy(), (anp * post).sum(1), atol=1e-5)


def test_anps_are_the_brute_force_top_3_of_the_reused_embeddings(scored: RunRef, demo_dir: Path) -> None:
    side = scored.store.stage("factual").read_all(table="embeddings").to_pandas()
    rows = joined(scored).merge(side, on="sample_id").head(8)
    scorer = AnpScorer(load_clip(demo_dir / "models" / "clip"),
                       load_anp_vocabulary(demo_dir / "anps.txt"))
    images = torch.from_numpy(np.stack(rows["image_embedding"].map(
        lambda v: np.asarray(v, np.float32)).to_list()))
    similarity = torch.nn.functional.normalize(images, dim=-1) @ scorer.text_embeddings.T
    best = similarity.topk(3, dim=1).indices
    assert [[scorer.anp_texts[i] for i in row] for row in best.tolist()] == \
        [list(anps) for anps in rows["anps"]]


def test_batch_size_and_reuse_do_not_change_results(scored: RunRef, demo_dir: Path,
                                                    tmp_path: Path) -> None:
    raw = demo_config(demo_dir, tmp_path, factual={"batch_size": 5},
                      emotional={"batch_size": 3, "reuse_factual_embeddings": False})
    other = joined(run_stages(raw, CHAIN)).set_index("sample_id")
    base = joined(scored).set_index("sample_id").loc[other.index]
    np.testing.assert_allclose(other["factual_score"], base["factual_score"], atol=1e-5)
    # Reuse reads float16 embeddings; recomputing keeps float32: scores agree to rounding.
    np.testing.assert_allclose(other["emotional_score"], base["emotional_score"], atol=2e-2)
    agree = np.mean([a[0] == b[0] for a, b in zip(other["anps"], base["anps"])])
    assert agree >= 0.9


def test_planted_factual_mismatches_score_lower(scored: RunRef, demo_dir: Path) -> None:
    truth = pd.read_csv(demo_dir / "ground_truth.csv", dtype={"source_id": str})
    rows = joined(scored).merge(truth, on="source_id")
    matched = rows[rows["factual_match"]]["factual_score"]
    mismatched = rows[~rows["factual_match"]]["factual_score"]
    assert matched.mean() > mismatched.mean()
    assert roc_auc_score(rows["factual_match"], rows["factual_score"]) > 0.7


def test_long_texts_are_truncated_and_counted(demo_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "posts"
    import shutil
    shutil.copytree(demo_dir / "tumemo", data)
    (data / "100010.txt").write_text("a red car " * 60)
    raw = demo_config(demo_dir, tmp_path / "a", ingest={"path": str(data)})
    ref = run_stages(raw, ["ingest", "factual"])
    rows = ref.store.stage("factual").read_all().to_pandas()
    assert rows["text_truncated"].sum() == 1
    assert ref.store.stage("factual").manifest["summary"]["texts_truncated"] == 1


def test_image_changed_after_ingest_becomes_a_reject(demo_dir: Path, tmp_path: Path) -> None:
    import shutil
    data = tmp_path / "posts"
    shutil.copytree(demo_dir / "tumemo", data)
    raw = demo_config(demo_dir, tmp_path / "a", ingest={"path": str(data)})
    ref = run_stages(raw, ["ingest"])
    (data / "100010.jpg").write_bytes(b"overwritten")
    run_stages(raw, ["factual", "emotional"])
    manifest = ref.store.stage("factual").manifest
    assert manifest["rejects_by_reason"] == {"image_load_failed": 1}
    assert manifest["rows_in"] == manifest["rows_out"] + 1
    emotional = ref.store.stage("emotional").manifest
    assert emotional["rejects_by_reason"] == {"no_image_embedding": 1}


def test_reuse_with_a_different_clip_is_refused(scored: RunRef, demo_dir: Path, tmp_path: Path) -> None:
    raw = demo_config(demo_dir, tmp_path, emotional={"clip": "ViT-B-32"})
    with pytest.raises(UserError, match="reuse_factual_embeddings"):
        run_stages(raw, CHAIN)
