"""Tiny BLIP and InstructBLIP captioners trained briefly (with the demo captioner's training loop)
to name the colour of a picture, so their captions depend on the image: a test that shuffles,
drops or repeats images in batching sees the wrong colour in a caption."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    BlipForConditionalGeneration,
    BlipProcessor,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
)

from affectflow.demo.captioner import caption_targets, single_thread, train_captioner
from affectflow.models.captioner import KCDP_PROMPT, build_tiny_blip, build_tiny_instructblip

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220), "dark": (15, 15, 15)}
"""Colour words the tiny models' vocabulary has, with the RGB of their pictures."""
EPOCHS = {"blip": 30, "instructblip": 120}
PER_COLOUR = 16


def colour_image(name: str, rng: random.Random) -> Image.Image:
    """A noisy picture of one colour, of a random size (the processor resizes it)."""
    size = rng.randint(28, 44)
    noise = np.random.default_rng(rng.randrange(1 << 30)).integers(-25, 26, (size, size, 3))
    return Image.fromarray(np.clip(np.array(COLOURS[name]) + noise, 0, 255).astype(np.uint8))


def colour_of(caption: str) -> str | None:
    """The colour word a trained captioner puts second ('a red photo ...')."""
    words = caption.split()
    return words[1] if len(words) > 1 and words[1] in COLOURS else None


def train_colour_captioner(kind: str, directory: Path, seed: int = 0) -> Path:
    """Build the tiny model of `kind`, teach it "a <colour> photo" and save it at `directory`."""
    rng = random.Random(seed)
    names = [name for _ in range(PER_COLOUR) for name in COLOURS]
    images, texts = [colour_image(name, rng) for name in names], [f"a {name} photo" for name in names]
    untrained = directory.with_name(directory.name + "-untrained")
    with single_thread():
        if kind == "blip":
            build_tiny_blip(untrained, seed=seed)
            model = BlipForConditionalGeneration.from_pretrained(untrained)
            processor = BlipProcessor.from_pretrained(untrained)
            input_ids, attention_mask = caption_targets(processor, texts)
            pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
            inputs = {"pixel_values": pixels, "input_ids": input_ids, "attention_mask": attention_mask}
            labels = input_ids.masked_fill(attention_mask == 0, -100)
        else:
            build_tiny_instructblip(untrained, seed=seed)
            model = InstructBlipForConditionalGeneration.from_pretrained(untrained)
            processor = InstructBlipProcessor.from_pretrained(untrained)
            inputs = dict(processor(images=images, text=[KCDP_PROMPT] * len(images),
                                    return_tensors="pt").items())
            targets = processor.tokenizer(texts, padding=True, return_tensors="pt")
            labels = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, -100)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            train_captioner(model, inputs, labels, EPOCHS[kind], seed)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
