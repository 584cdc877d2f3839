"""`python -m bench.gpu [--tiny] [--only SECTION ...]`: the pipeline's figures on one GPU, one table.

Real architectures with random weights (nothing is downloaded) on real JPEGs this script writes
(2,000 photo-like 640x480 files):

- `scoring`: the factual and emotional stages with ViT-B-32 and ViT-L-14, images/s and their
  ratio to the bare forward on pre-decoded, preprocessed device tensors (emotional encodes its
  own images and scores the 4,342 MVSO ANPs with the packaged MiniLM as the text encoder);
- `caption`: the caption stage with a BLIP-base-sized and an InstructBLIP-flan-t5-xl-sized
  model at KCDP's generation settings (5 beams, repetition penalty 5, 30-50 new tokens),
  captions/s and the ratio to bare `generate` on prepared pixel batches;
- `pacl`: one PACL training step with ResNet-50 and ViT-B/16 at the paper's batch (32 per
  partition, 128), samples/s and the share of masks and losses (bench/pacl_step.py);
- `cternet`: one CTERNet training step with res2net101d at 448 px, batch 16
  (bench/cternet_step.py);
- `kmeans`: the cluster stage's faiss k-means on 1M x 512 points for K = 2, 3, 6, 10, 15, 25.

Each row gives its rate, the ratio to the bare computation where there is one, the achieved
TFLOP/s (floating-point operations counted by `torch.utils.flop_counter` on one batch, or
2·n·d·K per k-means iteration) and their share of the device's dense bf16 peak (NVIDIA's data
sheet figure for the GPUs in `BF16_PEAK_TFLOPS`; `--peak-tflops` for others), and the peak GPU
memory. It is sized to finish within about 8 minutes on one H100 or H200. `--tiny` runs the
same code with tiny architectures, 32 small JPEGs and 10k points on the CPU in about a minute;
the test suite runs it. Results also go to artifacts/bench/gpu-*.parquet.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from affectflow.core.images import load_rgb
from affectflow.core.runner import StageJob, run_stage
from affectflow.core.runs import RunStore
from affectflow.models.anp import AnpScorer, load_anp_vocabulary
from affectflow.models.captioner import TINY_WORDS, build_tiny_blip, build_tiny_instructblip
from affectflow.models.clip import encode_images, encode_texts, load_clip, save_clip, tiny_clip_config
from affectflow.models.specs import packaged_model_path
from affectflow.models.text_encoder import load_text_encoder
from affectflow.pipelines.config import RunSettings
from affectflow.stages.emotional import EmotionalParams, EmotionalStage
from affectflow.stages.factual import FactualParams, FactualStage
from affectflow.stages.ingest.stage import IMAGE_PATH, TEXT, IngestParams, IngestStage
from affectflow.stages.knowledge.caption import CaptionParams, CaptionStage
from bench import cternet_step, pacl_step
from bench.common import timed, write_photos

SECTIONS = ("scoring", "caption", "pacl", "cternet", "kmeans")
MINILM = str(packaged_model_path("all-MiniLM-L6-v2"))
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
KMEANS_ITERATIONS = 25
# KCDP's generation settings (its public code), for both captioner families.
KCDP_GENERATION = {"num_beams": 5, "repetition_penalty": 5.0, "max_new_tokens": 50,
                   "min_new_tokens": 30}


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the full sizes on a GPU, tiny ones (`--tiny`) on the CPU."""

    photos: int
    photo_size: tuple[int, int]
    clips: tuple[str, ...]
    anps: int | None  # None: the whole MVSO vocabulary
    scoring_batch: int
    captioners: tuple[str, ...]
    caption_images: dict[str, int]
    caption_batch: int
    pacl: tuple[tuple[str, int, int], ...]  # (visual spec, batch, image size)
    cternet: tuple[str, int, int]  # (backbone, input size, batch)
    kmeans: tuple[int, int, tuple[int, ...]]  # (points, dimensions, Ks)
    steps: int


GPU = Sizes(photos=2000, photo_size=(640, 480), clips=("ViT-B-32", "ViT-L-14"), anps=None,
            scoring_batch=256, captioners=("blip-base", "instructblip-flan-t5-xl"),
            caption_images={"blip-base": 512, "instructblip-flan-t5-xl": 128}, caption_batch=64,
            pacl=(("timm:resnet50", 128, 224), ("open_clip:ViT-B-16", 128, 224)),
            cternet=("res2net101d", 448, 16), kmeans=(1_000_000, 512, (2, 3, 6, 10, 15, 25)),
            steps=5)
TINY = Sizes(photos=32, photo_size=(160, 120), clips=("tiny",), anps=64, scoring_batch=16,
             captioners=("tiny-blip", "tiny-instructblip"),
             caption_images={"tiny-blip": 8, "tiny-instructblip": 4}, caption_batch=4,
             pacl=(("timm:test_resnet", 8, 32), ("timm:test_vit", 8, 32)),
             cternet=("test_resnet", 48, 2), kmeans=(10_000, 16, (2, 3)), steps=1)


@dataclass
class Row:
    """One measured line of the table."""

    section: str
    model: str
    rate: float
    unit: str
    vs_bare: float | None = None
    tflops: float | None = None
    peak_gib: float | None = None
    detail: str = ""


@dataclass
class Bench:
    """A run's device, sizes and scratch folder, and the rows measured so far."""

    device: torch.device
    sizes: Sizes
    root: Path
    rows: list[Row] = field(default_factory=list)

    @property
    def settings(self) -> RunSettings:
        return RunSettings(artifact_root=self.root / "artifacts",
                           workers=max(2, min(16, (torch.get_num_threads() or 2))))

    def reset_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**30


def counted_flops(work: Callable[[], object]) -> float:
    """Floating-point operations of one call of `work` (matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        work()
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given is not None:
        return given, "given with --peak-tflops"
    if device.type != "cuda":
        return None, "no bf16 peak for a CPU"
    name = torch.cuda.get_device_name(device)
    for model, value in BF16_PEAK_TFLOPS.items():
        if model in name:
            return value, f"NVIDIA data sheet, dense bf16, {model}"
    return None, f"{name}: unknown peak, pass --peak-tflops"


# ---------------------------------------------------------------------------- posts and runs
def write_posts(folder: Path, photos: list[tuple[str, str]]) -> Path:
    """A TumEmo-layout folder over the photos (hard-linked, not copied: ingest reads only files
    inside the dataset folder) with short post texts."""
    folder.mkdir(parents=True, exist_ok=True)
    moods = ["Happy", "Sad", "Calm", "Angry", "Fear", "Love", "Bored"]
    lines = ["id label"]
    for index, (path, _) in enumerate(photos):
        post = f"{index:05d}"
        os.link(path, folder / f"{post}.jpg")
        (folder / f"{post}.txt").write_text(f"post {index}: a {moods[index % 7].lower()} day #bench")
        lines.append(f"{post} {moods[index % 7]}")
    (folder / "all_data_id_and_label.txt").write_text("\n".join(lines) + "\n")
    return folder


def ingested(bench: Bench, name: str, posts: Path) -> RunStore:
    store = RunStore(bench.settings.artifact_root, name)
    store.create({}, {})
    run_stage(StageJob(store, IngestStage(), IngestParams(source="tumemo", path=posts,
                                                          shard_size=512), bench.settings))
    return store


def stage_seconds(manifest: dict[str, Any]) -> float:
    """The stage's wall time without its one-time model load."""
    return manifest["timings"]["seconds"] - manifest["timings"]["setup_seconds"]


# ---------------------------------------------------------------------------- scoring
def clip_folder(bench: Bench, arch: str) -> Path:
    """A random-weight CLIP of `arch` saved the way real models are loaded (open_clip layout)."""
    torch.manual_seed(0)
    config = tiny_clip_config(image_size=32, patch_size=8) if arch == "tiny" else \
        open_clip.get_model_config(arch)
    model = open_clip.CLIP(**config) if arch == "tiny" else open_clip.create_model(arch)
    return save_clip(model, config, bench.root / "clips" / arch)


def scoring(bench: Bench) -> None:
    sizes = bench.sizes
    store = ingested(bench, "scoring", write_posts(bench.root / "posts", write_photos(
        bench.root / "photos", sizes.photos, sizes.photo_size)))
    vocabulary = bench.root / "anps.txt"
    anps = load_anp_vocabulary()
    vocabulary.write_text("\n".join(anps[:sizes.anps] if sizes.anps else anps) + "\n")
    for arch in sizes.clips:
        score_with(bench, arch, store, vocabulary)
        empty_cache(bench.device)


def score_with(bench: Bench, arch: str, store: RunStore, vocabulary: Path) -> None:
    """The factual and emotional rows of one CLIP architecture."""
    rows = store.stage("ingest").read_all([IMAGE_PATH, TEXT]).to_pylist()
    texts = [row[TEXT] for row in rows]
    batch = bench.sizes.scoring_batch
    folder = clip_folder(bench, arch)
    bundle = load_clip(folder, device=bench.device)
    pixels = torch.stack([bundle.preprocess(load_rgb(row[IMAGE_PATH])) for row in rows])
    pixels = pixels.to(bench.device)

    def bare_factual() -> None:
        for start in range(0, len(pixels), batch):
            encode_images(bundle, pixels[start:start + batch])
        encode_texts(bundle, texts, batch)

    bare_factual()  # warm-up: kernels, allocator
    bare = timed(bare_factual)[1]
    flops = counted_flops(lambda: (encode_images(bundle, pixels[:batch]),
                                   encode_texts(bundle, texts[:batch], batch)))
    bench.reset_memory()
    manifest = run_stage(StageJob(store, FactualStage(), FactualParams(
        clip=str(folder), batch_size=batch), bench.settings), force=True)
    seconds = stage_seconds(manifest)
    bench.rows.append(Row("factual", arch, len(rows) / seconds, "images/s", bare / seconds,
                          flops / batch * len(rows) / seconds / 1e12, bench.peak_gib(),
                          f"{len(rows)} posts, batch {batch}; bare {len(rows) / bare:.0f}/s"))

    encoder = load_text_encoder(MINILM, device=bench.device)
    scorer = AnpScorer(bundle, load_anp_vocabulary(vocabulary), cache_dir=bench.root / "anp-cache")

    def bare_emotional() -> None:
        for start in range(0, len(pixels), batch):
            matches = scorer.top_k(encode_images(bundle, pixels[start:start + batch]), k=3)
            encoder.encode([", ".join(found) for found in matches.anp_texts], batch)
        encoder.encode(texts, batch)

    bare_emotional()
    bare = timed(bare_emotional)[1]
    flops = counted_flops(lambda: (scorer.top_k(encode_images(bundle, pixels[:batch]), k=3),
                                   encoder.encode(texts[:batch], batch),
                                   encoder.encode(texts[:batch], batch)))
    bench.reset_memory()
    manifest = run_stage(StageJob(store, EmotionalStage(), EmotionalParams(
        clip=str(folder), batch_size=batch, anp_vocabulary=vocabulary, text_encoder=MINILM,
        reuse_factual_embeddings=False), bench.settings), force=True)
    seconds = stage_seconds(manifest)
    bench.rows.append(Row("emotional", arch, len(rows) / seconds, "images/s", bare / seconds,
                          flops / batch * len(rows) / seconds / 1e12, bench.peak_gib(),
                          f"{len(scorer.vocabulary)} ANPs, MiniLM text encoder; bare "
                          f"{len(rows) / bare:.0f}/s"))


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- captioning
def synthetic_vocabulary(size: int, specials: list[str]) -> list[str]:
    """Real words first, then numbered tokens, to a real tokenizer's vocabulary size."""
    words = [*specials, *TINY_WORDS]
    return words + [f"w{index}" for index in range(size - len(words))]


def build_blip_base(directory: Path) -> Path:
    """BLIP-base's architecture (ViT-B/16 at 384 px, 12-layer BERT decoder, 30,524 tokens)
    with random weights, saved with a processor like a hub checkpoint."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocabulary = synthetic_vocabulary(30522, specials)
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocabulary)},
                              bos_token="[DEC]", additional_special_tokens=["[ENC]"])
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 384, "width": 384}),
                              tokenizer=tokenizer)
    config = BlipConfig(text_config={"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                                     "eos_token_id": tokenizer.sep_token_id,
                                     "sep_token_id": tokenizer.sep_token_id,
                                     "pad_token_id": tokenizer.pad_token_id},
                        vision_config={"image_size": 384, "initializer_range": 0.02})
    return _save(BlipForConditionalGeneration(config), processor, directory)


def build_instructblip_xl(directory: Path) -> Path:
    """InstructBLIP flan-t5-xl's architecture (EVA ViT-g/14, 12-layer Q-Former with 32
    queries, T5-XL: 24+24 layers of 2,048) with random weights, saved with a processor."""
    from transformers import (
        BertTokenizer,
        BlipImageProcessor,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        T5Config,
        T5Tokenizer,
    )

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"\u2581{word}", -float(rank + 1))
               for rank, word in enumerate(synthetic_vocabulary(32000 - len(pieces), []))]
    t5_tokenizer = T5Tokenizer(vocab=pieces, extra_ids=100)
    bert = synthetic_vocabulary(30522, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    qformer_tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(bert)})
    processor = InstructBlipProcessor(image_processor=BlipImageProcessor(size={"height": 224, "width": 224}),
                                      tokenizer=t5_tokenizer, qformer_tokenizer=qformer_tokenizer,
                                      num_query_tokens=32)
    text = T5Config(vocab_size=len(t5_tokenizer), d_model=2048, d_kv=64, d_ff=5120, num_layers=24,
                    num_decoder_layers=24, num_heads=32, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False, pad_token_id=t5_tokenizer.pad_token_id,
                    eos_token_id=t5_tokenizer.eos_token_id,
                    decoder_start_token_id=t5_tokenizer.pad_token_id)
    config = InstructBlipConfig(qformer_config={"vocab_size": len(qformer_tokenizer),
                                                "pad_token_id": qformer_tokenizer.pad_token_id},
                                text_config=text.to_dict(), num_query_tokens=32,
                                image_token_index=t5_tokenizer.convert_tokens_to_ids("<image>"))
    return _save(InstructBlipForConditionalGeneration(config), processor, directory)


def _save(model: torch.nn.Module, processor: Any, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(directory)  # type: ignore[operator]
    processor.save_pretrained(directory)
    return directory


CAPTIONERS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "blip-base": ("blip", build_blip_base),
    "instructblip-flan-t5-xl": ("instructblip", build_instructblip_xl),
    "tiny-blip": ("blip", build_tiny_blip),
    "tiny-instructblip": ("instructblip", build_tiny_instructblip),
}


def caption(bench: Bench) -> None:
    sizes = bench.sizes
    photos = sorted(str(path) for path in (bench.root / "photos").glob("*.jpg"))
    if len(photos) < max(sizes.caption_images.values()):
        photos = [path for path, _ in write_photos(bench.root / "photos", sizes.photos,
                                                   sizes.photo_size)]
    for name in sizes.captioners:
        caption_with(bench, name, photos[:sizes.caption_images[name]])
        empty_cache(bench.device)


def caption_with(bench: Bench, name: str, photos: list[str]) -> None:
    """The row of one captioner: the stage, then bare `generate` on prepared pixels."""
    kind, build = CAPTIONERS[name]
    batch = bench.sizes.caption_batch
    with torch.device(bench.device):  # initialise the random weights where they will run
        folder = build(bench.root / "captioners" / name)
    store = ingested(bench, f"caption-{name}", write_posts(
        bench.root / f"caption-posts-{name}", [(path, "") for path in photos]))
    params = CaptionParams(kind=kind, model=str(folder), batch_size=batch, **KCDP_GENERATION)
    bench.reset_memory()
    seconds = stage_seconds(run_stage(StageJob(store, CaptionStage(), params, bench.settings)))
    stage = CaptionStage()
    state = stage.setup(StageJob(store, stage, params, bench.settings).context("bench"))
    pixels = [torch.stack([state.pixels(load_rgb(path)) for path in photos[start:start + batch]])
              for start in range(0, len(photos), batch)]

    def bare() -> None:
        for chunk in pixels:
            state.captioner.generate(state.batch(chunk))

    state.captioner.generate(state.batch(pixels[0]))  # warm-up
    bare_seconds = timed(bare)[1]
    flops = counted_flops(lambda: state.captioner.generate(state.batch(pixels[0])))
    settings = state.captioner.generation
    count = len(photos)
    bench.rows.append(Row("caption", name, count / seconds, "captions/s", bare_seconds / seconds,
                          flops / len(pixels[0]) * count / seconds / 1e12, bench.peak_gib(),
                          f"{count} images, batch {batch}, {settings['num_beams']} beams, "
                          f"{settings['min_new_tokens']}-{settings['max_new_tokens']} new "
                          f"tokens; bare {count / bare_seconds:.1f}/s"))
    shutil.rmtree(folder)


# ---------------------------------------------------------------------------- training steps
def pacl(bench: Bench) -> None:
    for spec, batch, image_size in bench.sizes.pacl:
        bench.reset_memory()
        timing = pacl_step.measure_step(spec, batch, image_size, bench.device,
                                        bench.sizes.steps)[pacl_step.DEFAULT_CANDIDATES]
        bench.rows.append(Row("pacl step", spec, timing.samples_per_second, "samples/s", None,
                              timing.flops / timing.step_seconds / 1e12, bench.peak_gib(),
                              f"batch {batch} at {image_size} px (4 partitions x {batch // 4}); "
                              f"masks+losses {timing.loss_seconds / timing.step_seconds:.1%} of "
                              "the step"))
        empty_cache(bench.device)


def cternet(bench: Bench) -> None:
    backbone, input_size, batch = bench.sizes.cternet
    bench.reset_memory()
    timing = cternet_step.measure_step(backbone, input_size, batch, bench.device, bench.sizes.steps)
    bench.rows.append(Row("cternet step", backbone, timing.samples_per_second, "images/s", None,
                          timing.flops / timing.best.total / 1e12, bench.peak_gib(),
                          f"batch {batch} at {input_size} px, full mode; head "
                          f"{timing.head_share:.1%} of forward+backward"))
    empty_cache(bench.device)


def kmeans(bench: Bench) -> None:
    from affectflow.stages.cluster.kmeans import faiss_uses_gpu, kmeans, l2_normalise

    count, dim, ks = bench.sizes.kmeans
    points = l2_normalise(np.random.default_rng(0).standard_normal((count, dim), dtype=np.float32))
    started = time.perf_counter()
    for k in ks:
        kmeans(points, k, KMEANS_ITERATIONS, seed=0, init="random")
    seconds = time.perf_counter() - started
    flops = sum(2.0 * count * dim * k * KMEANS_ITERATIONS for k in ks)
    where = "faiss on the GPU" if faiss_uses_gpu() else "faiss on the CPU (no GPU faiss here)"
    bench.rows.append(Row("kmeans", f"{count:,} x {dim}", count * len(ks) / seconds, "points/s",
                          None, flops / seconds / 1e12, None,
                          f"K={','.join(map(str, ks))}, {KMEANS_ITERATIONS} iterations each, "
                          f"{seconds:.1f} s in all, {where}"))


RUNNERS: dict[str, Callable[[Bench], None]] = {"scoring": scoring, "caption": caption, "pacl": pacl,
                                               "cternet": cternet, "kmeans": kmeans}


# ---------------------------------------------------------------------------- the table
def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[Row], device_line: str, peak: float | None) -> str:
    lines = [device_line,
             f"{'section':<13} {'model':<24} {'rate':>10} {'unit':<10} {'vs bare':>7} "
             f"{'TFLOP/s':>8} {'% peak':>6} {'peak GiB':>8}  detail"]
    for row in rows:
        share = None if peak is None or row.tflops is None else 100 * row.tflops / peak
        lines.append(f"{row.section:<13} {row.model:<24} {row.rate:>10.1f} {row.unit:<10} "
                     f"{_number(row.vs_bare, '.2f'):>7} {_number(row.tflops, '.3g'):>8} "
                     f"{_number(share, '.1f'):>6} {_number(row.peak_gib, '.1f'):>8}  {row.detail}")
    return "\n".join(lines)


def run(tiny: bool, only: list[str] | None = None, peak: float | None = None,
        out: Path | None = Path("artifacts/bench")) -> tuple[list[Row], str]:
    """Measure the chosen sections; returns the rows and the printed table."""
    if not tiny and not torch.cuda.is_available():
        raise SystemExit("bench.gpu needs a CUDA device; `python -m bench.gpu --tiny` runs the "
                         "same code on the CPU with tiny models")
    device = torch.device("cpu" if tiny else "cuda")
    sizes = TINY if tiny else GPU
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="affectflow-gpu-bench-") as tmp:
        bench = Bench(device, sizes, Path(tmp))
        for section in only or SECTIONS:
            print(f"bench.gpu: {section} ...", file=sys.stderr, flush=True)
            RUNNERS[section](bench)
    peak_value, peak_source = peak_tflops(device, peak)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    table = format_table(bench.rows, f"{name}, torch {torch.__version__}, bf16 peak "
                         f"{_number(peak_value, '.0f')} TFLOP/s ({peak_source}); "
                         f"{time.perf_counter() - started:.0f} s in all", peak_value)
    if out is not None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([vars(row) | {"device": name, "peak_tflops": peak_value} for row in bench.rows]
                     ).to_parquet(out / f"gpu-{stamp}.parquet")
    return bench.rows, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (seconds; CI)")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="sections to run")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak")
    parser.add_argument("--out", default="artifacts/bench", help="folder for the Parquet results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    _, table = run(args.tiny, args.only, args.peak_tflops, Path(args.out))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
