"""Images for CTERNet: the paper's train / evaluation transforms and a labelled-image dataset.

Training augmentation is a pure function of (seed, epoch, sample index): each sample draws its
random crop and flip from its own seed inside `torch.random.fork_rng`, so the result does not
depend on how many loader processes or training processes there are, and a resumed run sees
the same augmented images as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T

from affectflow.core.images import load_rgb
from affectflow.models.cternet.config import CTERNetConfig

# `eval_crop: imagenet` resizes the shorter side to input_size / 0.875 before the centre crop
# (the ImageNet convention, 256 -> 224); `shorter_side` resizes it to input_size itself.
IMAGENET_CROP_FRACTION = 0.875

ImageTransform = Callable[[Image.Image], Tensor]


@dataclass(frozen=True)
class LabelledImages:
    """Image files and their class indices, in a fixed order."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} image paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)


def normalize() -> T.Normalize:
    """ImageNet statistics: the ones the timm backbones were (or would be) pretrained with."""
    return T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


def train_transform(input_size: int, crop_scale: tuple[float, float]) -> ImageTransform:
    """Random resized crop to input_size, horizontal flip, normalisation (paper's augmentation)."""
    return T.Compose([T.RandomResizedCrop(input_size, scale=crop_scale), T.RandomHorizontalFlip(),
                      T.ToTensor(), normalize()])


def eval_geometry(config: CTERNetConfig) -> Callable[[Image.Image], Image.Image]:
    """The model's `eval_crop` (resize + centre crop to `input_size`), without tensor
    conversion: what heat-map overlays are drawn on.

    `shorter_side` (public code) keeps the whole shorter side, so the crop is the image's
    central square; `imagenet` drops the outer 12.5 % of it as ImageNet evaluation does.
    """
    size = config.input_size
    side = size if config.eval_crop == "shorter_side" else round(size / IMAGENET_CROP_FRACTION)
    return T.Compose([T.Resize(side), T.CenterCrop(size)])


def to_model_pixels(image: Image.Image) -> Tensor:
    """A crop of the model's input size as a normalised tensor."""
    return normalize()(T.functional.to_tensor(image))


def eval_transform(config: CTERNetConfig) -> ImageTransform:
    """Deterministic evaluation pixels: resize, centre crop, normalisation."""
    return T.Compose([eval_geometry(config), to_model_pixels])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct 63-bit seed per (run seed, epoch, sample)."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729 + 0x5DEECE66D) % (2**63 - 1)


class ImageDataset(Dataset[tuple[Tensor, int]]):
    """(pixels, label) pairs; with `seed` set, each sample's randomness comes from its own seed."""

    def __init__(self, images: LabelledImages, transform: ImageTransform,
                 seed: int | None = None) -> None:
        self.images = images
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Loader processes are started per epoch and copy this value with the dataset."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = load_rgb(self.images.paths[index])
        if self.seed is None:
            return self.transform(image), self.images.labels[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, index))
            pixels = self.transform(image)
        return pixels, self.images.labels[index]

