"""`caption` stage: tiny BLIP / InstructBLIP saved to disk and loaded back through `load_captioner`,
run on demo-scene posts after a real ingest; output equals a direct captioner call."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError

from affectflow.core.images import load_rgb
from affectflow.core.runner import StageJob, run_stage
from affectflow.core.runs import RunStore
from affectflow.demo.scenes import COLOURS, EMOTION_PALETTES, OBJECTS, draw_scene
from affectflow.models.captioner import (
    GENERATION_KEYS,
    KCDP_GENERATION,
    KCDP_PROMPT,
    build_tiny_blip,
    build_tiny_instructblip,
    load_captioner,
)
from affectflow.stages.ingest.stage import IngestParams, IngestStage
from affectflow.stages.knowledge.caption import SCHEMA, CaptionParams, CaptionStage
from tests.conftest import write_tumemo
from tests.models.colour_captioners import COLOURS as CAPTION_COLOURS
from tests.models.colour_captioners import colour_image, colour_of

FAST = {"num_beams": 2, "max_new_tokens": 8, "min_new_tokens": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("blip"), seed=0)


@dataclass(frozen=True)
class Settings:
    workers: int = 2


def write_posts(root: Path, count: int = 20) -> Path:
    """A TumEmo-layout folder of demo scenes (real JPEGs, each post a different picture)."""
    posts = {str(100 + index): ("Happy", f"post {index}") for index in range(count)}
    write_tumemo(root, posts)
    rng = random.Random(0)
    emotions = sorted(EMOTION_PALETTES)
    for index, post_id in enumerate(posts):
        scene = [(rng.choice(OBJECTS), rng.choice(sorted(COLOURS)))]
        draw_scene(emotions[index % len(emotions)], scene, rng, 64).save(root / f"{post_id}.jpg")
    return root


def ingested(root: Path, posts: Path) -> RunStore:
    store = RunStore(root / "artifacts", "run")
    store.create({}, {})
    run_stage(StageJob(store, IngestStage(), IngestParams(source="tumemo", path=posts,
                                                          shard_size=8), Settings()))
    return store


def caption(store: RunStore, force: bool = False, **params: Any) -> dict[str, Any]:
    job = StageJob(run=store, stage=CaptionStage(), params=CaptionParams(**params),
                   settings=Settings())
    return run_stage(job, force=force)


def blip_params(blip_dir: Path, **overrides: Any) -> dict[str, Any]:
    return {"kind": "blip", "model": str(blip_dir), "batch_size": 4, **FAST, **overrides}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    root = tmp_path_factory.mktemp("captioned")
    return ingested(root, write_posts(root / "posts"))


def joined(store: RunStore) -> pd.DataFrame:
    posts = store.stage("ingest").read_all(columns=["sample_id", "image_path"]).to_pandas()
    captions = store.stage("caption").read_all().to_pandas()
    return posts.merge(captions, on="sample_id", how="left")


def test_captions_equal_a_direct_captioner_call(store: RunStore,
                                                blip_dir: Path) -> None:
    manifest = caption(store, **blip_params(blip_dir))
    rows = joined(store)
    assert store.stage("caption").schema() == SCHEMA
    assert manifest["rows_in"] == len(rows) == manifest["rows_out"]
    assert manifest["rows_rejected"] == 0 and rows["caption"].notna().all()
    captioner = load_captioner("blip", str(blip_dir), **FAST)
    expected = captioner.caption([load_rgb(path) for path in rows["image_path"]])
    assert rows["caption"].tolist() == expected and rows["caption"].nunique() > 1
    assert set(rows["captioner"]) == {captioner.spec}
    assert captioner.spec.startswith(f"blip:{blip_dir}|")
    summary = manifest["summary"]
    assert summary["captions"] == len(rows)
    assert summary["mean_words"] == round(rows["caption"].str.split().str.len().mean(), 2)
    assert summary["empty_captions"] == 0
    assert summary["distinct_share"] == round(rows["caption"].nunique() / len(rows), 4)


def test_rerun_and_batch_size_do_not_change_captions(store: RunStore,
                                                     blip_dir: Path) -> None:
    caption(store, **blip_params(blip_dir))
    first = pq.read_table(store.stage("caption").shard_path(0))
    caption(store, force=True, **blip_params(blip_dir))
    assert pq.read_table(store.stage("caption").shard_path(0)).equals(first)
    base = joined(store).set_index("sample_id")["caption"]
    for batch_size in (1, 7):
        caption(store, **blip_params(blip_dir, batch_size=batch_size))
        other = joined(store).set_index("sample_id")["caption"]
        pd.testing.assert_series_equal(other, base)


def test_image_changed_after_ingest_becomes_a_reject(blip_dir: Path, tmp_path: Path) -> None:
    data = write_posts(tmp_path / "posts")
    store = ingested(tmp_path, data)
    (data / "110.jpg").write_bytes(b"overwritten")
    (data / "111.jpg").unlink()
    manifest = caption(store, **blip_params(blip_dir))
    assert manifest["rejects_by_reason"] == {"image_load_failed": 2}
    assert manifest["rows_in"] == manifest["rows_out"] + 2
    rejects = store.stage("caption").rejects().to_pandas()
    assert sorted(rejects["source_id"]) == ["110", "111"]
    assert rejects["detail"].str.len().gt(0).all()
    posts = set(store.stage("ingest").read_all(columns=["sample_id"])["sample_id"].to_pylist())
    kept = set(store.stage("caption").read_all(columns=["sample_id"])["sample_id"].to_pylist())
    assert kept | set(rejects["sample_id"]) == posts and not kept & set(rejects["sample_id"])


def test_instructblip_uses_the_kcdp_prompt_and_equals_a_direct_call(
        store: RunStore, tmp_path_factory: pytest.TempPathFactory) -> None:
    model_dir = build_tiny_instructblip(tmp_path_factory.mktemp("instructblip"), seed=0)
    settings = {"num_beams": 1, "max_new_tokens": 4, "min_new_tokens": 1}
    caption(store, kind="instructblip", model=str(model_dir), batch_size=8, **settings)
    rows = joined(store).head(12)
    captioner = load_captioner("instructblip", str(model_dir), **settings)
    assert captioner.prompt == KCDP_PROMPT and repr(KCDP_PROMPT) in captioner.spec
    assert rows["caption"].tolist() == captioner.caption([load_rgb(p) for p in rows["image_path"]])


def test_params_defaults_follow_the_kind() -> None:
    assert CaptionParams().model == "Salesforce/instructblip-flan-t5-xl"
    assert CaptionParams().generation() == {}
    assert CaptionParams(kind="blip").model == "Salesforce/blip-image-captioning-base"
    assert CaptionParams(num_beams=5, min_new_tokens=3).generation() == {"num_beams": 5,
                                                                          "min_new_tokens": 3}


@pytest.mark.parametrize(("params", "message"), [
    ({"kind": "blip", "model": "/no/such/captioner"}, "model path does not exist"),
    ({"kind": "gpt"}, "'blip' or 'instructblip'"),
    ({"prompt": "  "}, "prompt is blank"),
    ({"kind": "blip", "max_new_tokens": 4}, "min_new_tokens (5) must not exceed max_new_tokens (4)"),
    ({"num_beams": 0}, "greater than or equal to 1"),
    ({"device": "cuda:0"}, "no GPU is visible"),
    ({"caption_model": "x"}, "Extra inputs are not permitted"),
])
def test_bad_params_fail_with_a_message_naming_the_fix(params: dict[str, Any], message: str) -> None:
    if "device" in params and torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(ValidationError) as error:
        CaptionParams(**params)
    assert message in str(error.value)


def test_a_folder_of_the_other_kind_is_refused(blip_dir: Path) -> None:
    with pytest.raises(ValidationError, match="holds a 'blip' model but kind is 'instructblip'"):
        CaptionParams(kind="instructblip", model=str(blip_dir))


def colour_posts(root: Path, count: int = 22) -> tuple[RunStore, dict[str, str]]:
    """Ingested posts whose pictures are each one colour (source id -> colour), in shards of 8."""
    rng = random.Random(4)
    colours = {str(200 + index): rng.choice(sorted(CAPTION_COLOURS)) for index in range(count)}
    data = write_tumemo(root / "posts", {post_id: ("Happy", "post") for post_id in colours})
    for post_id, colour in colours.items():
        image = colour_image(colour, rng)
        image.resize((48, 48)).save(data / f"{post_id}.jpg", quality=95)
    return ingested(root, data), colours


def captions_by_source(store: RunStore) -> dict[str, str]:
    posts = store.stage("ingest").read_all(columns=["sample_id", "source_id"]).to_pylist()
    source_of = {row["sample_id"]: row["source_id"] for row in posts}
    return {source_of[row["sample_id"]]: row["caption"]
            for row in store.stage("caption").read_all(columns=["sample_id", "caption"]).to_pylist()}


@pytest.mark.parametrize("kind", ["blip", "instructblip"])
def test_each_post_gets_the_caption_of_its_own_picture(kind: str, colour_captioners: dict[str, Path],
                                                       tmp_path: Path) -> None:
    """Captions that name the picture's colour: a mix-up between prefetch threads, batches of 3
    and shards of 8 would put a wrong colour on some post."""
    store, colours = colour_posts(tmp_path)
    caption(store, kind=kind, model=str(colour_captioners[kind]), batch_size=3, **FAST)
    found = {source: colour_of(text) for source, text in captions_by_source(store).items()}
    assert found == colours


def test_the_stage_gives_generate_the_kcdp_prompt_and_settings(colour_captioners: dict[str, Path],
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A default InstructBLIP caption stage: every `generate` call gets KCDP's settings and, for
    every image of the batch, the tokens the processor makes of the KCDP prompt."""
    from transformers import InstructBlipForConditionalGeneration

    calls: list[dict[str, Any]] = []
    original = InstructBlipForConditionalGeneration.generate

    def recording(self: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(InstructBlipForConditionalGeneration, "generate", recording)
    store, colours = colour_posts(tmp_path, count=10)
    folder = colour_captioners["instructblip"]
    manifest = caption(store, kind="instructblip", model=str(folder), batch_size=4)
    assert len(calls) == 3 and manifest["rows_out"] == 10
    processor = load_captioner("instructblip", str(folder)).preprocessor.processor
    prompt = processor(images=[colour_image("red", random.Random(0))], text=[KCDP_PROMPT],
                       return_tensors="pt")
    for call in calls:
        assert {key: call[key] for key in GENERATION_KEYS} == KCDP_GENERATION
        for name in ("input_ids", "qformer_input_ids"):
            assert (call[name] == prompt[name]).all()
    assert {source: colour_of(text) for source, text in captions_by_source(store).items()} == colours
