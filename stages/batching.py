"""Batches of decoded images for model stages, loaded by worker processes while the model runs.

Stages that apply a model's own preprocessing to each picture (CLIP, BLIP) use
`prefetched_image_batches`; stages whose views start from cached pixels (cluster, PACL, probe,
CTERNet) use `core.loading.pixel_batches` / `fill_cache` with the run's `pixel_store`. Either
way the workers are the process's shared DataLoader workers for that preprocessing
(core/loading.py), and a file that fails to load comes back as `(index, reason)`, so the stage
rejects that row instead of failing the shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from affectflow.core.loading import ImageBatch, LoaderSettings, PreprocessLoad, shared_loader
from affectflow.core.pixel_cache import PixelCache, PixelStore
from affectflow.core.pixels import Decoder, PixelTransform

PIXEL_CACHE_DIR = Path("cache") / "pixels"


def prefetched_image_batches(paths: Sequence[str], batch_size: int,
                             preprocess: Callable[[Image.Image], torch.Tensor],
                             workers: int, device: torch.device | None = None) -> Iterator[ImageBatch]:
    """Batches of `preprocess(load_rgb(path))` in order, loaded on `workers` processes."""
    yield from shared_loader(PreprocessLoad(preprocess), workers, device).batches(paths, batch_size)


def pixel_cache_root(artifact_root: str | Path) -> Path:
    return Path(artifact_root) / PIXEL_CACHE_DIR


def pixel_cache(settings: Any) -> PixelCache:
    """The run's pixel cache: `run.pixel_cache_gb` bounds it, 0 turns it off."""
    return PixelCache(pixel_cache_root(settings.artifact_root), int(settings.pixel_cache_gb * 1e9))


def pixel_store(settings: Any, transform: PixelTransform) -> PixelStore:
    """The run's pixel cache entries of one transform."""
    return pixel_cache(settings).store(transform)


def loader_settings(settings: Any, device: torch.device) -> LoaderSettings:
    """The run's loader processes, pixel cache and JPEG decoder, for a job on `device`."""
    return LoaderSettings(settings.workers, pixel_cache(settings), jpeg_decoder(settings, device))


def jpeg_decoder(settings: Any, device: torch.device) -> Decoder:
    """`torchvision` (nvJPEG) when the run asks for GPU JPEG decoding and the stage is on a GPU."""
    return "torchvision" if settings.gpu_jpeg_decode and device.type == "cuda" else "pil"
