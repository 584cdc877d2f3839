"""Images for PACL training and evaluation: uint8 squares from the pixel cache.

The pacl stage's shard pass decoded every training image into the cache (or rejected it), so
epochs read squares instead of decoding JPEGs; an image missing from the cache (pruned, evicted
by the size bound, or found damaged) is decoded from its file again and cached anew. A file that
fails to load at that point means the data set changed under the run, which is reported with
its path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from affectflow.core.loading import LoaderSettings, PixelRequest, pixel_batches
from affectflow.core.pixels import PixelTransform


class ImageLostError(RuntimeError):
    """An image that loaded when the stage checked it no longer does."""


@dataclass
class PathImages:
    """An ImageSource over image files through the pixel cache: batches load on the loader
    processes while the model runs and arrive on `device`."""

    paths: Sequence[str]
    sha256s: Sequence[str]
    loading: LoaderSettings
    device: torch.device | None = None

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.sha256s):
            raise ValueError(f"{len(self.paths)} image paths but {len(self.sha256s)} hashes")

    def squares(self, batches: Sequence[Tensor], side: int) -> Iterator[Tensor]:
        if not batches:
            return
        size = len(batches[0])
        if any(len(batch) != size for batch in batches[:-1]) or len(batches[-1]) > size:
            raise ValueError("PathImages needs equally sized batches (the last may be smaller)")
        store = self.loading.cache.store(PixelTransform("square", side, decoder=self.loading.decoder))
        requests = [PixelRequest(self.paths[int(index)], self.sha256s[int(index)])
                    for batch in batches for index in batch]
        for loaded in pixel_batches(requests, size, store, self.loading.workers, self.device):
            if loaded.failures or loaded.pixels is None:
                index, error = loaded.failures[0]
                raise ImageLostError(f"{requests[index].path} no longer loads ({error}); it was "
                                     "valid when the stage started: rerun the stage with --force")
            yield loaded.stacked
