"""`emotional.image_text`: the image described by its caption, its ANPs or both, each score equal
to a direct MiniLM computation, and the side-by-side ROC AUC on the demo's planted mismatches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from affectflow.core.errors import UserError
from affectflow.core.runner import StageJob, run_stage
from affectflow.models.specs import packaged_model_path
from affectflow.models.text_encoder import load_text_encoder
from affectflow.pipelines.config import load_config
from affectflow.pipelines.execution import RunRef, make_job
from affectflow.stages.emotional import IMAGE_TEXT_SCORES, EmotionalParams, describe_image
from tests.stages.helpers import demo_config, run_stages
from tests.stages.test_triplets_stage import ScriptedCaptionParams, ScriptedCaptionStage

MINILM = str(packaged_model_path("all-MiniLM-L6-v2"))
CHAIN = ["ingest", "caption", "factual", "emotional"]
KINDS = ["anps", "caption", "anps+caption"]


@pytest.fixture(scope="module")
def compared(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunRef:
    raw = demo_config(demo_dir, tmp_path_factory.mktemp("image-text"), emotional={
        "image_text": "caption", "compare_image_texts": KINDS,
        "ground_truth": str(demo_dir / "ground_truth.csv")})
    return run_stages(raw, CHAIN)


def joined(ref: RunRef) -> pd.DataFrame:
    ingest = ref.store.stage("ingest").read_all(columns=["sample_id", "source_id", "text"]).to_pandas()
    caption = ref.store.stage("caption").read_all(columns=["sample_id", "caption"]).to_pandas()
    emotional = ref.store.stage("emotional").read_all().to_pandas()
    return ingest.merge(caption, on="sample_id").merge(emotional, on="sample_id")


def test_image_texts_are_caption_anps_or_both() -> None:
    assert describe_image("anps", "gloomy car, dull star", "a sad picture.") == "gloomy car, dull star"
    assert describe_image("caption", "gloomy car", " a sad picture. ") == "a sad picture."
    assert describe_image("anps+caption", "gloomy car", "a sad picture.") == "a sad picture. gloomy car"
    assert describe_image("caption", "gloomy car", "  ") is None
    assert describe_image("anps+caption", "gloomy car", None) is None


def test_each_image_text_score_equals_minilm_on_that_text_and_the_post(compared: RunRef) -> None:
    rows = joined(compared)
    assert (rows["image_text"] == rows["caption"].str.strip()).all()
    encoder = load_text_encoder(MINILM)
    post = encoder.encode(list(rows["text"])).numpy()
    side = compared.store.stage("emotional").read_all(table=IMAGE_TEXT_SCORES).to_pandas()
    assert sorted(side["image_text_kind"].unique()) == sorted(KINDS)
    for kind in KINDS:
        texts = [describe_image(kind, anps, caption) for anps, caption in
                 zip(rows["anp_text"], rows["caption"])]
        expected = (encoder.encode(texts).numpy() * post).sum(1)
        scores = side[side["image_text_kind"] == kind].set_index("sample_id")["emotional_score"]
        np.testing.assert_allclose(scores.loc[rows["sample_id"]].to_numpy(), expected, atol=1e-5)
        if kind == "caption":
            np.testing.assert_allclose(rows["emotional_score"].to_numpy(), expected, atol=1e-5)


def test_auc_of_each_image_text_on_the_planted_mismatches(compared: RunRef, demo_dir: Path) -> None:
    summary = compared.store.stage("emotional").manifest["summary"]
    truth = pd.read_csv(demo_dir / "ground_truth.csv", dtype={"source_id": str})
    side = compared.store.stage("emotional").read_all(table=IMAGE_TEXT_SCORES).to_pandas()
    posts = compared.store.stage("ingest").read_all(columns=["sample_id", "source_id"]).to_pandas()
    rows = side.merge(posts, on="sample_id").merge(truth, on="source_id")
    for kind in KINDS:
        chosen = rows[rows["image_text_kind"] == kind]
        expected = roc_auc_score(chosen["emotional_match"], chosen["emotional_score"])
        assert summary["emotional_match_auc"][kind] == pytest.approx(expected)
        assert summary["auc_samples"][kind] == len(chosen)
    assert summary["image_text"] == "caption"
    assert (compared.store.stage("emotional").path / "image_text_roc.png").is_file()
    assert all(kind in summary["headline"][0] for kind in KINDS)


def test_without_a_comparison_the_configured_text_alone_is_scored(demo_dir: Path, tmp_path: Path) -> None:
    raw = demo_config(demo_dir, tmp_path, emotional={"ground_truth": str(demo_dir / "ground_truth.csv")})
    ref = run_stages(raw, ["ingest", "factual", "emotional"])
    stage = ref.store.stage("emotional")
    assert stage.num_rows(IMAGE_TEXT_SCORES) == 0
    assert list(stage.manifest["summary"]["emotional_match_auc"]) == ["anps"]
    assert set(stage.manifest["inputs"]) == {"ingest", "factual"}


def test_posts_without_a_caption_are_rejected_with_the_reason(demo_dir: Path, tmp_path: Path) -> None:
    raw = demo_config(demo_dir, tmp_path, emotional={"image_text": "anps+caption"})
    ref = run_stages(raw, ["ingest", "factual"])
    sources = ref.store.stage("ingest").read_all(columns=["source_id"])["source_id"].to_pylist()
    captions = {source: "a calm picture shows a tree." for source in sources}
    captions[sources[0]], captions[sources[1]] = None, "  "
    run_stage(StageJob(ref.store, ScriptedCaptionStage(), ScriptedCaptionParams(captions=captions),
                       load_config(None, raw=raw).run))
    manifest = run_stage(make_job(ref, load_config(None, raw=raw), "emotional"))
    assert manifest["rejects_by_reason"] == {"no_caption": 1, "empty_caption": 1}
    assert manifest["rows_in"] == manifest["rows_out"] + 2


def test_comparison_needs_a_ground_truth() -> None:
    with pytest.raises(ValueError, match="compare_image_texts needs ground_truth"):
        EmotionalParams(compare_image_texts=["caption"])


def test_a_caption_image_text_needs_the_caption_stage_before_it(demo_dir: Path, tmp_path: Path) -> None:
    raw = demo_config(demo_dir, tmp_path, emotional={"image_text": "caption"})
    raw["run"]["stages"] = ["ingest", "factual", "emotional"]
    with pytest.raises(UserError, match=r"'emotional' needs \['caption'\] listed before it"):
        load_config(None, raw=raw)
