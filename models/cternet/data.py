"""Images for CTERNet: the paper's train / evaluation transforms and a labelled-image dataset.

Images are decoded once into the pixel cache at `cached_pixels(config)`: shorter side resized
to the model's `eval_crop` resize (input_size under `shorter_side`, input_size / 0.875 under
`imagenet`: 448 or 512 for 448), aspect ratio kept. The evaluation view is their centre crop,
exactly what resizing the file would give; training takes the paper's random resized crop and
flip from the whole cached image, so every crop box the file would allow is still drawn (in
relative coordinates), only sampled from that cached resolution instead of the original one.
Images more elongated than 4:1 are cut to 4:1 around their centre first (core/pixels.py), which
bounds an entry's size and never touches the centre crop.

Training augmentation is a pure function of (seed, epoch, sample index): each sample draws its
random crop and flip from its own seed inside `torch.random.fork_rng`, so the result does not
depend on how many loader processes or training processes there are, and a resumed run sees
the same augmented images as an uninterrupted one. The epoch travels with each index
(`EpochSampler`), so persistent loader processes see it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

from affectflow.core.pixel_cache import PixelStore
from affectflow.core.pixels import Decoder, PixelTransform, load_pixels
from affectflow.models.cternet.config import CTERNetConfig

# `eval_crop: imagenet` resizes the shorter side to input_size / 0.875 before the centre crop
# (the ImageNet convention, 256 -> 224); `shorter_side` resizes it to input_size itself.
IMAGENET_CROP_FRACTION = 0.875

ImageTransform = Callable[[Tensor], Tensor]
"""uint8 (3, H, W) cached pixels -> the model's normalised float input."""


@dataclass(frozen=True)
class LabelledImages:
    """Image files, their class indices and (for the pixel cache) sha256s, in a fixed order."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    sha256s: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} image paths but {len(self.labels)} labels")
        if self.sha256s is not None and len(self.sha256s) != len(self.paths):
            raise ValueError(f"{len(self.paths)} image paths but {len(self.sha256s)} hashes")

    def __len__(self) -> int:
        return len(self.paths)


def eval_side(config: CTERNetConfig) -> int:
    """The shorter side the model's `eval_crop` resizes to before its centre crop: input_size
    (`shorter_side`, public code: the crop is the image's central square) or input_size / 0.875
    (`imagenet`: the outer 12.5 % of the shorter side is dropped, as ImageNet evaluation does)."""
    size = config.input_size
    return size if config.eval_crop == "shorter_side" else round(size / IMAGENET_CROP_FRACTION)


def cached_pixels(config: CTERNetConfig, decoder: Decoder = "pil") -> PixelTransform:
    """What CTERNet's views start from: shorter side `eval_side(config)`, aspect kept."""
    return PixelTransform("short_side", eval_side(config), "bilinear", decoder)


def normalize() -> T.Normalize:
    """ImageNet statistics: the ones the timm backbones were (or would be) pretrained with."""
    return T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


def _to_model_input(pixels: Tensor) -> Tensor:
    return normalize()(pixels.float().div(255.0))


def train_transform(input_size: int, crop_scale: tuple[float, float]) -> ImageTransform:
    """Random resized crop to input_size, horizontal flip, normalisation (paper's augmentation)."""
    return T.Compose([T.RandomResizedCrop(input_size, scale=crop_scale, antialias=True),
                      T.RandomHorizontalFlip(), _to_model_input])


@dataclass(frozen=True)
class EvalView:
    """Deterministic evaluation pixels: the centre crop of the cached image, normalised. A
    value (equal views share loader processes) usable as a loader view (second argument)."""

    input_size: int

    def __call__(self, pixels: Tensor, _view_arg: object = None) -> Tensor:
        return _to_model_input(TF.center_crop(pixels, [self.input_size, self.input_size]))


def eval_transform(config: CTERNetConfig) -> EvalView:
    """The evaluation view of pixels cached at `cached_pixels(config)`."""
    return EvalView(config.input_size)


def eval_geometry(config: CTERNetConfig) -> Callable[[Image.Image], Image.Image]:
    """The evaluation crop of a decoded picture as a picture: what heat-map overlays are drawn
    on, cut exactly as the model's input is."""
    pixels, crop = cached_pixels(config), T.CenterCrop(config.input_size)
    return lambda image: TF.to_pil_image(crop(pixels.apply(TF.pil_to_tensor(image))))


def to_model_pixels(image: Image.Image) -> Tensor:
    """A crop of the model's input size as a normalised tensor."""
    return _to_model_input(TF.pil_to_tensor(image))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct 63-bit seed per (run seed, epoch, sample)."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729 + 0x5DEECE66D) % (2**63 - 1)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (epoch, index) pairs from another sampler, so the epoch reaches datasets in
    persistent loader processes (which keep the dataset they were started with)."""

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        set_inner = getattr(self.sampler, "set_epoch", None)
        if set_inner is not None:
            set_inner(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


class ImageDataset(Dataset[tuple[Tensor, int]]):
    """(pixels, label) pairs from the pixel cache (`store`; the files themselves without one).

    With `seed` set, each sample's randomness comes from its own seed; index it with
    `(epoch, index)` pairs (`EpochSampler`) or plain indices (epoch 0).
    """

    def __init__(self, images: LabelledImages, transform: ImageTransform,
                 seed: int | None = None, store: PixelStore | None = None,
                 pixels: PixelTransform | None = None) -> None:
        self.images = images
        self.transform = transform
        self.seed = seed
        self.store = store
        self.pixel_transform = store.transform if store is not None else pixels
        if self.pixel_transform is None:
            raise ValueError("ImageDataset needs a pixel store or the pixel transform")

    def __len__(self) -> int:
        return len(self.images)

    def cached(self, index: int) -> Tensor:
        """The image's cached uint8 pixels (decoded from its file on a cache miss)."""
        sha = self.images.sha256s[index] if self.images.sha256s is not None else None
        found = self.store.read(sha) if self.store is not None and sha is not None else None
        if found is not None:
            return found
        assert self.pixel_transform is not None
        return load_pixels(self.images.paths[index], sha, self.pixel_transform)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image = self.cached(index)
        if self.seed is None:
            return self.transform(image), self.images.labels[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            pixels = self.transform(image)
        return pixels, self.images.labels[index]

