"""`factual` and `emotional` stage rows/s vs the bare model forward on pre-decoded, pre-batched
tensors with the same model and batch size (ViT-B-32 with random weights, CPU; target >= 0.85)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from affectflow.core.images import load_rgb
from affectflow.core.runner import StageJob, run_stage
from affectflow.core.runs import RunStore
from affectflow.models.anp import AnpScorer, load_anp_vocabulary
from affectflow.models.clip import encode_images, encode_texts, load_clip, save_clip
from affectflow.models.specs import packaged_model_path
from affectflow.models.text_encoder import load_text_encoder
from affectflow.stages.emotional import EmotionalParams, EmotionalStage
from affectflow.stages.factual import FactualParams, FactualStage
from affectflow.stages.ingest.stage import IngestParams, IngestStage
from bench.common import BenchRow, peak_rss_mib, timed
from bench.ingest_speed import make_posts

MINILM = str(packaged_model_path("all-MiniLM-L6-v2"))


@dataclass(frozen=True)
class Settings:
    workers: int
    artifact_root: Path


def _stage_seconds(manifest: dict) -> tuple[float, float]:
    """(stage wall time without the one-time model load, that load): the ratio compares steady
    throughput, which is what a long run sees; the load is reported beside it."""
    timings = manifest["timings"]
    return timings["seconds"] - timings["setup_seconds"], timings["setup_seconds"]


def _warm_then_time(work: Callable[[], object]) -> float:
    """Seconds of `work` after one untimed pass: the stage runs after the bare loop in the same
    process, so the bare side must not pay the first-forward warm-up alone."""
    work()
    return timed(work)[1]


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
        # --quick scores against the first 512 MVSO ANPs: embedding all 4,342 through a ViT-B-32
        # text tower takes minutes on CPU (once per model; a real run caches it on disk).
        vocabulary = root / "anps.txt"
        anps = load_anp_vocabulary()[:512] if quick else load_anp_vocabulary()
        vocabulary.write_text("\n".join(anps) + "\n", encoding="utf-8")
        settings = Settings(workers=2, artifact_root=root / "artifacts")
        store = RunStore(settings.artifact_root, "bench")
        store.create({}, {})
        run_stage(StageJob(store, IngestStage(), IngestParams(source="tumemo", path=posts,
                                                             shard_size=count), settings))
        rows = store.stage("ingest").read_all().to_pandas()

        bundle = load_clip(root / "clip")
        pixels = torch.stack([bundle.preprocess(load_rgb(p)) for p in rows["image_path"]])
        texts = list(rows["text"])

        def bare_factual_pass() -> None:
            for i in range(0, count, batch):
                encode_images(bundle, pixels[i:i + batch])
            encode_texts(bundle, texts, batch)

        bare_factual = _warm_then_time(bare_factual_pass)
        factual = FactualParams(clip=str(root / "clip"), batch_size=batch)
        stage_factual, setup_factual = _stage_seconds(
            run_stage(StageJob(store, FactualStage(), factual, settings)))
        rss_factual = peak_rss_mib()

        encoder = load_text_encoder(MINILM)
        scorer = AnpScorer(bundle, load_anp_vocabulary(vocabulary), cache_dir=root / "cache")
        images = encode_images(bundle, pixels)

        def bare_emotional_pass() -> None:
            matches = scorer.top_k(images, k=3)
            encoder.encode([", ".join(a) for a in matches.anp_texts], batch)
            encoder.encode(texts, batch)

        bare_emotional = _warm_then_time(bare_emotional_pass)
        emotional = EmotionalParams(clip=str(root / "clip"), batch_size=batch,
                                    anp_vocabulary=vocabulary, text_encoder=MINILM)
        stage_emotional, setup_emotional = _stage_seconds(
            run_stage(StageJob(store, EmotionalStage(), emotional, settings)))
    return [
        BenchRow("factual stage rows/s vs bare forward", bare_factual / stage_factual, 0.85,
                 detail=f"{count} posts, batch {batch}: stage {count / stage_factual:.1f} rows/s, "
                        f"bare {count / bare_factual:.1f} rows/s, model load {setup_factual:.1f}s "
                        f"(once per worker, not in the ratio), peak RSS {rss_factual:.0f} MiB"),
        BenchRow("emotional stage rows/s vs bare forward", bare_emotional / stage_emotional, 0.85,
                 detail=f"{len(anps)} ANPs: stage "
                        f"{count / stage_emotional:.1f} rows/s, bare {count / bare_emotional:.1f} "
                        f"rows/s, model + ANP load {setup_emotional:.1f}s (not in the ratio), "
                        f"peak RSS {peak_rss_mib():.0f} MiB"),
    ]
