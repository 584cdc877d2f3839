"""PACL epoch image loading from the pixel cache vs from the JPEGs (target >= 5x).

One PACL epoch's worth of batches (a random order, batch 64) through the image source the
training job uses (`stages/pacl/images.PathImages`: 2 loader processes, squares of 256 px for
a 224 px encoder) with the cache switched off (every image decoded from its 640x480 JPEG, as
every epoch did before the cache) and with the cache filled by the stage's shard pass (not
timed; its cost is one such decoding epoch). Only loading is timed: no model runs.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import torch

from affectflow.core.loading import LoaderSettings, PixelRequest, fill_cache
from affectflow.core.pixel_cache import PixelCache
from affectflow.models.pacl.augment import load_size, square_pixels
from affectflow.stages.pacl.images import PathImages
from bench.common import BenchRow, timed, write_photos

IMAGE_SIZE = 224
BATCH = 64
WORKERS = 2


def epoch(images: PathImages, count: int, seed: int) -> int:
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    batches = list(order[: count - count % BATCH].split(BATCH))
    return sum(len(squares) for squares in images.squares(batches, load_size(IMAGE_SIZE)))


def run(quick: bool) -> list[BenchRow]:
    count = 256 if quick else 1024
    with tempfile.TemporaryDirectory() as tmp:
        photos = write_photos(Path(tmp) / "jpegs", count)
        paths, hashes = [path for path, _ in photos], [sha for _, sha in photos]
        cached = PixelCache(Path(tmp) / "cache", 10**10)
        fill_cache([PixelRequest(path, sha) for path, sha in photos],
                   cached.store(square_pixels(IMAGE_SIZE)), WORKERS)
        off = PixelCache(Path(tmp) / "off", 0)
        sources = {"jpeg": PathImages(paths, hashes, LoaderSettings(WORKERS, off)),
                   "cache": PathImages(paths, hashes, LoaderSettings(WORKERS, cached))}
        for source in sources.values():
            epoch(source, BATCH * 2, seed=0)  # start each source's loader processes
        seconds = {name: float("inf") for name in sources}
        for round_ in range(2):
            for name, source in sources.items():
                seconds[name] = min(seconds[name],
                                    timed(partial(epoch, source, count, round_))[1])
    images = count - count % BATCH
    rate = {name: images / value for name, value in seconds.items()}
    return [BenchRow("PACL epoch image loading, cache vs JPEG", rate["cache"] / rate["jpeg"], 5.0,
                     detail=f"{images} images/epoch, 640x480 JPEGs -> 256 px squares, {WORKERS} "
                            f"loader processes: cache {rate['cache']:.0f} images/s, JPEG "
                            f"{rate['jpeg']:.0f} images/s",
                     extra={"cache_images_per_s": rate["cache"], "jpeg_images_per_s": rate["jpeg"]})]
