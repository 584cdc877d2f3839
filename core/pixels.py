"""An image file's pixels at a fixed geometry: what the pixel cache stores, computed one way.

Every cached view (PACL's squares and crops, the probe's and cluster's centre views, CTERNet's
random resized crops) starts from a `PixelTransform` of the decoded image: uint8 (3, H, W),
shorter side resized to `side`, then either centre-cropped to a square or kept at its aspect
ratio. The same function fills the cache and serves a miss, so a stage computes the same
numbers whether its images came from the cache or from their files.

The bytes are read once and checked against the sha256 ingest recorded before they are decoded,
so an entry filed under a hash holds the pixels of exactly those bytes. Decoding goes through
`core.images.load_rgb` (EXIF-aware); the one other decoder is torchvision's `decode_jpeg`, an
option for stages that read JPEGs on a GPU (nvJPEG there, libjpeg-turbo on a CPU), which applies
the EXIF orientation too and falls back to `load_rgb` for anything it cannot decode.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from PIL import UnidentifiedImageError
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from affectflow.core.files import read_regular_file
from affectflow.core.images import load_rgb

Geometry = Literal["square", "short_side"]
Interpolation = Literal["bilinear", "bicubic"]
Decoder = Literal["pil", "torchvision"]

# A kept-aspect image more elongated than this is centre-cropped to it along its long side, so
# one panorama cannot make an entry of gigabytes (ingest bounds pixels, not aspect ratios).
MAX_ASPECT = 4.0
_JPEG_MAGIC = b"\xff\xd8\xff"
_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


class ImageChangedError(ValueError):
    """The file's bytes are not the ones ingest validated (edited or replaced since)."""


@dataclass(frozen=True)
class PixelTransform:
    """Decoded RGB, shorter side resized to `side` (antialiased), then a centre square
    (`square`) or the whole image up to `MAX_ASPECT` (`short_side`), as uint8 (3, H, W).

    `decoder` names the JPEG decoder: `pil` (Pillow's libjpeg-turbo, through `load_rgb`) or
    `torchvision` (`decode_jpeg`, on the GPU when one decodes). The two agree to within a grey
    level or so, not bit for bit, so they are different transforms with different cache entries.
    """

    geometry: Geometry
    side: int
    interpolation: Interpolation = "bicubic"
    decoder: Decoder = "pil"

    def __post_init__(self) -> None:
        if self.geometry not in ("square", "short_side"):
            raise ValueError(f"geometry must be 'square' or 'short_side', got {self.geometry!r}")
        if self.interpolation not in _INTERPOLATION:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATION)}, "
                             f"got {self.interpolation!r}")
        if self.decoder not in ("pil", "torchvision"):
            raise ValueError(f"decoder must be 'pil' or 'torchvision', got {self.decoder!r}")
        if not isinstance(self.side, int) or self.side < 1:
            raise ValueError(f"side must be a positive int, got {self.side!r}")

    def identity(self) -> dict[str, str | int]:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.geometry} {self.side} px, {self.interpolation}, {self.decoder} decoder"

    def apply(self, image: Tensor) -> Tensor:
        """(3, H, W) uint8 (on any device) -> this transform's uint8 pixels."""
        height, width = image.shape[-2:]
        if self.geometry == "short_side":
            limit = round(MAX_ASPECT * min(height, width))
            if max(height, width) > limit:
                image = TF.center_crop(image, [min(height, limit), min(width, limit)])
        resized = TF.resize(image, [self.side], interpolation=_INTERPOLATION[self.interpolation],
                            antialias=True)
        if self.geometry == "square":
            resized = TF.center_crop(resized, [self.side, self.side])
        return resized.contiguous()


def read_checked(path: str | os.PathLike[str], sha256: str | None) -> bytes:
    """The file's bytes, after checking they hash to `sha256` (when given). Only a regular file
    is read (`FileProblem` otherwise), so a path swapped for a FIFO cannot block a worker."""
    data = read_regular_file(path, "image", max_bytes=None)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ImageChangedError(f"{path} differs from the file ingest validated (sha256 "
                                "mismatch); rerun ingest")
    return data


def decode_rgb(data: bytes) -> Tensor:
    """(3, H, W) uint8 of encoded image bytes, through `load_rgb` (EXIF orientation applied)."""
    try:
        return TF.pil_to_tensor(load_rgb(io.BytesIO(data)))
    except UnidentifiedImageError:
        raise UnidentifiedImageError("not a recognised image format") from None


def is_jpeg(data: bytes | Tensor) -> bool:
    head = bytes(data[:3].tolist()) if isinstance(data, Tensor) else data[:3]
    return head == _JPEG_MAGIC


def decode_with(transform: PixelTransform, data: bytes) -> Tensor:
    """Decoded pixels of `data` on the CPU with the transform's decoder (Pillow for non-JPEGs)."""
    if transform.decoder == "torchvision" and is_jpeg(data):
        return decode_jpegs([torch.frombuffer(bytearray(data), dtype=torch.uint8)], "cpu")[0]
    return decode_rgb(data)


def load_pixels(path: str | os.PathLike[str], sha256: str | None,
                transform: PixelTransform) -> Tensor:
    """The transform's pixels of the file at `path` (bytes checked against `sha256`), on the CPU."""
    return transform.apply(decode_with(transform, read_checked(path, sha256)))


def decode_jpegs(datas: Sequence[Tensor], device: str | torch.device) -> list[Tensor]:
    """(3, H, W) uint8 RGB of each JPEG byte tensor, decoded on `device` (a batch on a GPU),
    with the EXIF orientation applied as `load_rgb` does. Raises on the first bad JPEG."""
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its codecs in favour of TorchCodec, which has no batched
        # GPU JPEG decoder with EXIF handling yet; this is the one call that uses them.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision.io")
        decoded = decode_jpeg(list(datas), mode=ImageReadMode.RGB, device=device,
                              apply_exif_orientation=True)
    return list(decoded)
