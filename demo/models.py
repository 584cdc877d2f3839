"""`affectflow demo-models`: the small models the demo runs with, built and saved locally.

Hub checkpoints cannot be downloaded here, so the demo trains a tiny CLIP on the demo's clean
caption pairs and saves it in open_clip's directory layout; the pipeline then loads it through
the same `load_clip` path a real checkpoint uses.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import open_clip
import torch

from affectflow.core.errors import UserError
from affectflow.core.images import load_rgb
from affectflow.demo.clip_training import train_clip
from affectflow.models.clip import load_clip, save_clip, tiny_clip_config

logger = logging.getLogger(__name__)

DEMO_CLIP_CONFIG = {"embed_dim": 64, "image_size": 64, "patch_size": 8, "width": 96, "layers": 3,
                    "heads": 4, "context_length": 32}


def read_caption_pairs(folder: Path) -> tuple[list[Path], list[str]]:
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        raise UserError(f"no caption pairs at {manifest}", hint="run `affectflow demo-data DIR` first")
    with open(manifest, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [folder / row["image"] for row in rows], [row["text"] for row in rows]


def build_demo_clip(data_dir: Path, out_dir: Path, epochs: int = 8, seed: int = 0) -> Path:
    """Train and save the demo CLIP at `out_dir` (skipped when a saved one is already there)."""
    if (out_dir / "open_clip_config.json").is_file():
        logger.info("demo CLIP already at %s", out_dir)
        return out_dir
    torch.manual_seed(seed)
    config = tiny_clip_config(**DEMO_CLIP_CONFIG)
    save_clip(open_clip.model.CLIP(**config), config, out_dir / "_untrained")
    bundle = load_clip(out_dir / "_untrained")
    paths, texts = read_caption_pairs(data_dir / "captions")
    pixels = torch.stack([bundle.preprocess(load_rgb(path)) for path in paths])
    history = train_clip(bundle, pixels, texts, epochs=epochs, seed=seed)
    logger.info("demo CLIP trained: loss %.3f -> %.3f", history[0], history[-1])
    save_clip(bundle.model, config, out_dir)
    for leftover in (out_dir / "_untrained").iterdir():
        leftover.unlink()
    (out_dir / "_untrained").rmdir()
    return out_dir


def build_demo_models(data_dir: Path, epochs: int = 8, seed: int = 0,
                      captioner_epochs: int = 24) -> dict[str, str]:
    """Every model the demo config names, under `<data_dir>/models/`."""
    # Imported here: demo.captioner reads the caption pairs through this module.
    from affectflow.demo.captioner import build_demo_captioner

    models = data_dir / "models"
    return {"clip": str(build_demo_clip(data_dir, models / "clip", epochs, seed)),
            "captioner": str(build_demo_captioner(data_dir, models / "captioner", seed=seed,
                                                  epochs=captioner_epochs))}
