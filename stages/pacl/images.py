"""Images for PACL training and evaluation, decoded from their files on worker threads.

Files were validated by ingest and again by the pacl stage's shard pass; one that fails to load
during training means the data set changed under the run, which is reported with its path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from affectflow.models.pacl.augment import load_square
from affectflow.stages.batching import prefetched_image_batches


class ImageChangedError(RuntimeError):
    """An image that loaded when the stage checked it no longer does."""


@dataclass
class PathImages:
    """An ImageSource over image files: batches decode on `workers` threads while the model runs."""

    paths: Sequence[str]
    workers: int

    def squares(self, batches: Sequence[Tensor], side: int) -> Iterator[Tensor]:
        if not batches:
            return
        size = len(batches[0])
        if any(len(batch) != size for batch in batches):
            raise ValueError("PathImages needs equally sized batches")
        flat = [self.paths[int(index)] for batch in batches for index in batch]
        for loaded in prefetched_image_batches(flat, size, partial(load_square, side=side),
                                               self.workers):
            if loaded.failures or loaded.pixels is None:
                index, error = loaded.failures[0]
                raise ImageChangedError(f"{flat[index]} no longer loads ({error}); it was valid "
                                        "when the stage started: rerun the stage with --force")
            yield loaded.pixels
