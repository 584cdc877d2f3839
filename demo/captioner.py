"""The demo's captioner: a tiny BLIP trained briefly on the demo's clean caption pairs.

Hub captioners cannot be downloaded here and a random tiny BLIP writes word salad, so the demo
trains one with BLIP's own captioning loss (the decoder's next-token loss, `forward(labels=...)`)
and saves model + processor where `load_captioner("blip", folder)` reads them, the same path a
real checkpoint takes. `build_tiny_blip`'s fixed word list lacks the demo's words, so the
tokenizer vocabulary is built from the caption texts. The model is small enough to train in
well under a minute on two CPU cores (see docs/knowledge.md for measured time and quality).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    PreTrainedModel,
)

from affectflow.core.images import load_rgb
from affectflow.demo.models import read_caption_pairs

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
IMAGE_SIZE = 32
PATCH_SIZE = 4
WIDTH = 64
LAYERS = 2
BATCH_SIZE = 32
LEARNING_RATE = 3e-3
MAX_CAPTION_TOKENS = 32


def caption_vocabulary(texts: Sequence[str]) -> list[str]:
    """Every word and punctuation mark of the captions, split as `BertTokenizer` splits them."""
    normalizer, splitter = BertNormalizer(lowercase=True), BertPreTokenizer()
    return sorted({word for text in texts
                   for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text))})


def demo_blip(vocabulary: Sequence[str], seed: int) -> tuple[BlipForConditionalGeneration,
                                                              BlipProcessor]:
    """An untrained BLIP (2-layer ViT on 32 px, 2-layer decoder) and its processor."""
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *vocabulary])}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", additional_special_tokens=["[ENC]"],
                              model_max_length=MAX_CAPTION_TOKENS)
    processor = BlipProcessor(image_processor=BlipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}), tokenizer=tokenizer)
    layers = {"hidden_size": WIDTH, "intermediate_size": 2 * WIDTH, "num_hidden_layers": LAYERS,
              "num_attention_heads": 2}
    text_config = {**layers, "vocab_size": len(tokenizer), "encoder_hidden_size": WIDTH,
                   "max_position_embeddings": MAX_CAPTION_TOKENS,
                   "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.sep_token_id,
                   "sep_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id}
    # BLIP's default vision init (std 1e-10) would start every image from the same features.
    vision_config = {**layers, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE,
                     "initializer_range": 0.02}
    config = BlipConfig(text_config=text_config, vision_config=vision_config,
                        projection_dim=WIDTH, image_text_hidden_size=WIDTH)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config)
    return model, processor


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Tiny matmuls run faster on one thread; two spin against each other on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def caption_targets(processor: BlipProcessor, texts: Sequence[str]) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """Decoder inputs starting with BLIP's [DEC] token (as `generate` does), padding masked."""
    encoded = processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    input_ids = encoded["input_ids"].clone()
    input_ids[:, 0] = processor.tokenizer.bos_token_id
    return input_ids, encoded["attention_mask"]


def train_captioner(model: PreTrainedModel, inputs: Mapping[str, torch.Tensor],
                    labels: torch.Tensor, epochs: int, seed: int) -> list[float]:
    """AdamW with a one-cycle schedule on a captioner's own loss (`forward(**inputs,
    labels=...)`: BLIP's and InstructBLIP's next-token loss); mean loss per epoch. `inputs` and
    `labels` hold one row per training pair."""
    steps_per_epoch = max(1, len(labels) // BATCH_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LEARNING_RATE,
                                                   total_steps=epochs * steps_per_epoch,
                                                   pct_start=0.1)
    order = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    for epoch in range(epochs):
        permutation = torch.randperm(len(labels), generator=order)
        losses = []
        for step in range(steps_per_epoch):
            rows = permutation[step * BATCH_SIZE:(step + 1) * BATCH_SIZE]
            loss = model(**{name: value[rows] for name, value in inputs.items()},
                         labels=labels[rows]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        history.append(sum(losses) / len(losses))
        logger.info("captioner training epoch %d/%d: loss %.3f", epoch + 1, epochs, history[-1])
    model.eval()
    return history


def is_saved_captioner(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "processor_config.json").is_file()


def build_demo_captioner(data_dir: Path, out_dir: Path, seed: int = 0, epochs: int = 24) -> Path:
    """Train and save the demo captioner at `out_dir` (skipped when one is already saved there).

    Written to a temporary sibling and renamed, so an interrupted build is never mistaken for a
    finished one.
    """
    if is_saved_captioner(out_dir):
        logger.info("demo captioner already at %s", out_dir)
        return out_dir
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    start = time.perf_counter()
    paths, texts = read_caption_pairs(data_dir / "captions")
    model, processor = demo_blip(caption_vocabulary(texts), seed)
    pixels = processor.image_processor(images=[load_rgb(path) for path in paths],
                                       return_tensors="pt")["pixel_values"]
    input_ids, attention_mask = caption_targets(processor, texts)
    inputs = {"pixel_values": pixels, "input_ids": input_ids, "attention_mask": attention_mask}
    with single_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        history = train_captioner(model, inputs, input_ids.masked_fill(attention_mask == 0, -100),
                                  epochs, seed)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    logger.info("demo captioner trained on %d pairs in %.1fs: loss %.3f -> %.3f", len(texts),
                time.perf_counter() - start, history[0], history[-1])
    return out_dir
