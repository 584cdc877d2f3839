"""`factual` and `emotional` stage rows/s vs the bare model forward on pre-decoded, pre-batched
tensors with the same model and batch size (ViT-B-32 with random weights, CPU; target >= 0.85)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from affectflow.core.runner import StageJob, run_stage
from affectflow.core.runs import RunStore
from affectflow.models.anp import AnpScorer, load_anp_vocabulary
from affectflow.models.clip import encode_images, encode_texts, load_clip, save_clip
from affectflow.models.text_encoder import load_text_encoder, packaged_minilm_path
from affectflow.stages.batching import load_rgb
from affectflow.stages.emotional import EmotionalParams, EmotionalStage
from affectflow.stages.factual import FactualParams, FactualStage
from affectflow.stages.ingest import IngestParams, IngestStage
from bench.common import BenchRow, peak_rss_mib
from bench.ingest_speed import make_posts


@dataclass(frozen=True)
class Settings:
    workers: int
    artifact_root: Path


def run(quick: bool) -> list[BenchRow]:
    count, batch = (48, 16) if quick else (128, 32)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
        save_clip(model, open_clip.get_model_config("ViT-B-32"), root / "clip")
        posts = root / "posts"
        posts.mkdir()
        make_posts(posts, count, 320)
        settings = Settings(workers=2, artifact_root=root / "artifacts")
        store = RunStore(settings.artifact_root, "bench")
        store.create({}, {})
        run_stage(StageJob(store, IngestStage(), IngestParams(source="tumemo", path=posts,
                                                             shard_size=count), settings))
        rows = store.stage("ingest").read_all().to_pandas()

        bundle = load_clip(root / "clip")
        pixels = torch.stack([bundle.preprocess(load_rgb(p)) for p in rows["image_path"]])
        texts = list(rows["text"])
        start = time.perf_counter()
        for i in range(0, count, batch):
            encode_images(bundle, pixels[i:i + batch])
        encode_texts(bundle, texts, batch)
        bare_factual = time.perf_counter() - start

        factual = FactualParams(clip=str(root / "clip"), batch_size=batch)
        start = time.perf_counter()
        run_stage(StageJob(store, FactualStage(), factual, settings))
        stage_factual = time.perf_counter() - start
        rss_factual = peak_rss_mib()

        encoder = load_text_encoder(packaged_minilm_path())
        scorer = AnpScorer(bundle, load_anp_vocabulary(), cache_dir=root / "cache")
        images = encode_images(bundle, pixels[:count])
        start = time.perf_counter()
        matches = scorer.top_k(images, k=3)
        encoder.encode([", ".join(a) for a in matches.anp_texts], batch)
        encoder.encode(texts, batch)
        bare_emotional = time.perf_counter() - start

        emotional = EmotionalParams(clip=str(root / "clip"), batch_size=batch,
                                    text_encoder=packaged_minilm_path())
        start = time.perf_counter()
        run_stage(StageJob(store, EmotionalStage(), emotional, settings))
        stage_emotional = time.perf_counter() - start
    # Stage times include loading the model once (setup), as a real run does.
    return [
        BenchRow("factual stage rows/s vs bare forward", bare_factual / stage_factual, 0.85,
                 detail=f"{count} posts, batch {batch}: stage {count / stage_factual:.1f} rows/s, "
                        f"bare {count / bare_factual:.1f} rows/s, peak RSS {rss_factual:.0f} MiB"),
        BenchRow("emotional stage rows/s vs bare forward", bare_emotional / stage_emotional, 0.85,
                 detail=f"stage {count / stage_emotional:.1f} rows/s, bare "
                        f"{count / bare_emotional:.1f} rows/s (ANP cache warm), "
                        f"peak RSS {peak_rss_mib():.0f} MiB"),
    ]
