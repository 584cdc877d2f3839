"""Batches of decoded, preprocessed images prepared by worker threads while the model runs.

Pillow releases the GIL while decoding and torchvision's tensor ops release it too, so a small
thread pool keeps the next batches ready without the fork-safety and start-up costs of worker
processes. A file that fails to load yields its exception in place of a tensor, so the stage can
reject that row with a reason instead of failing the shard.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from PIL import Image

from affectflow.core.images import load_rgb


@dataclass
class ImageBatch:
    """Indices into the shard for the rows that loaded, their stacked pixels, and failures."""

    indices: list[int]
    pixels: torch.Tensor | None
    failures: list[tuple[int, str]]


def _load_batch(paths: Sequence[str], offset: int,
                preprocess: Callable[[Image.Image], torch.Tensor],
                pool: ThreadPoolExecutor) -> ImageBatch:
    def one(path: str) -> torch.Tensor | Exception:
        try:
            return preprocess(load_rgb(path))
        except Exception as error:
            return error

    results = list(pool.map(one, paths))
    indices = [offset + i for i, r in enumerate(results) if isinstance(r, torch.Tensor)]
    failures = [(offset + i, f"{type(r).__name__}: {r}") for i, r in enumerate(results)
                if not isinstance(r, torch.Tensor)]
    tensors = [r for r in results if isinstance(r, torch.Tensor)]
    return ImageBatch(indices, torch.stack(tensors) if tensors else None, failures)


def prefetched_image_batches(paths: Sequence[str], batch_size: int,
                             preprocess: Callable[[Image.Image], torch.Tensor],
                             workers: int, depth: int = 2) -> Iterator[ImageBatch]:
    """Yield batches in order while up to `depth` later batches load on `workers` threads."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="image-load") as pool, \
            ThreadPoolExecutor(max_workers=depth, thread_name_prefix="batch") as batcher:
        starts = iter(range(0, len(paths), batch_size))
        in_flight: deque[Future[ImageBatch]] = deque()

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                in_flight.append(batcher.submit(_load_batch, paths[start:start + batch_size],
                                                start, preprocess, pool))

        for _ in range(depth):
            submit_next()
        while in_flight:
            batch = in_flight.popleft().result()
            submit_next()
            yield batch
