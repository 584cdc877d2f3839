"""Image views for training and evaluation, reproducible from a seed.

Images are decoded once into uint8 squares of side `load_size(image_size)` (shorter side
resized, centre cropped: `square_pixels`, kept in the pixel cache). Training takes a random
resized crop plus a horizontal flip of that square; evaluation takes its centre `image_size`
crop. Crop boxes are drawn from an explicit generator for the whole global micro-batch, so
every process of a data-parallel run and every resumed run applies exactly the augmentation a
single uninterrupted process would. Views run on the squares' device (a GPU in training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from affectflow.core.pixels import Decoder, PixelTransform

# The usual 224 -> 256 margin: random crops see a little more than the evaluation view.
LOAD_MARGIN = 8 / 7
_MAX_TRIES = 10


def load_size(image_size: int) -> int:
    """Side of the decoded square images are cached at before cropping."""
    return max(image_size, round(image_size * LOAD_MARGIN))


def square_pixels(image_size: int, decoder: Decoder = "pil") -> PixelTransform:
    """The cached squares of an encoder's input size: random crops and the centre view come
    from them."""
    return PixelTransform("square", load_size(image_size), decoder=decoder)


@dataclass(frozen=True)
class ViewConfig:
    """Output size and normalisation of the encoder, and the random-resized-crop range."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 <= self.flip_probability <= 1:
            raise ValueError(f"flip_probability must be in [0, 1], got {self.flip_probability}")


def crop_boxes(count: int, side: int, config: ViewConfig, generator: torch.Generator) -> Tensor:
    """(count, 5) int64 rows (top, left, height, width, flip) for random resized crops.

    The usual algorithm: area fraction uniform in crop_scale, log-uniform aspect ratio, up to
    ten tries, else the largest centre crop whose ratio is in range.
    """
    boxes = torch.empty(count, 5, dtype=torch.int64)
    log_low, log_high = math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1])
    for row in range(count):
        uniforms = torch.rand(_MAX_TRIES, 4, generator=generator, dtype=torch.float64)
        flip = float(torch.rand(1, generator=generator, dtype=torch.float64)) < config.flip_probability
        box = None
        for area_u, ratio_u, top_u, left_u in uniforms.tolist():
            area = side * side * (config.crop_scale[0] + area_u * (config.crop_scale[1] - config.crop_scale[0]))
            ratio = math.exp(log_low + ratio_u * (log_high - log_low))
            width = round(math.sqrt(area * ratio))
            height = round(math.sqrt(area / ratio))
            if 0 < width <= side and 0 < height <= side:
                box = (int(top_u * (side - height + 1)), int(left_u * (side - width + 1)), height, width)
                break
        if box is None:
            box = (0, 0, side, side)
        boxes[row] = torch.tensor([*box, int(flip)])
    return boxes


def normalise(images: Tensor, config: ViewConfig) -> Tensor:
    """uint8 (B, 3, H, W) -> float32 normalised with the encoder's mean and std (on the
    images' device)."""
    pixels = images.float().div_(255.0)
    mean = torch.tensor(config.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=images.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


def train_views(squares: Tensor, boxes: Tensor, config: ViewConfig) -> Tensor:
    """Random resized crops (+ flips) of uint8 squares, normalised, at the encoder's size."""
    if squares.shape[0] != boxes.shape[0]:
        raise ValueError(f"{squares.shape[0]} images but {boxes.shape[0]} crop boxes")
    size = [config.image_size, config.image_size]
    views = []
    for square, (top, left, height, width, flip) in zip(squares, boxes.tolist()):
        view = TF.resized_crop(square, top, left, height, width, size,
                               interpolation=InterpolationMode.BILINEAR, antialias=True)
        views.append(TF.horizontal_flip(view) if flip else view)
    return normalise(torch.stack(views), config)


def eval_views(squares: Tensor, config: ViewConfig) -> Tensor:
    """Centre `image_size` crop of uint8 squares, normalised: the deterministic evaluation view."""
    return normalise(TF.center_crop(squares, [config.image_size, config.image_size]), config)
