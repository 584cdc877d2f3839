"""The one way the project opens an image file: fully decoded, EXIF orientation applied, RGB.

Phones store portraits as landscape pixels plus an EXIF orientation tag; ignoring the tag feeds a
model a rotated picture. Every stage and model loader decodes through `load_rgb`, and ingest
records sizes as `upright_size` reports them.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from PIL import Image, ImageOps

EXIF_ORIENTATION = 0x0112
TRANSPOSED = {5, 6, 7, 8}
"""EXIF orientations that swap width and height (the four that rotate by 90 or 270 degrees)."""


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the image as displayed, its EXIF orientation applied."""
    orientation = image.getexif().get(EXIF_ORIENTATION)
    return (image.height, image.width) if orientation in TRANSPOSED else (image.width, image.height)


def allow_pixels(limit: int) -> None:
    """Raise Pillow's decompression-bomb limit in this process to at least `limit` pixels, so an
    image that a configured `max_image_pixels` accepts also decodes (the limit never drops)."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < limit:
        Image.MAX_IMAGE_PIXELS = limit


def load_rgb(path: str | os.PathLike[str] | BinaryIO,
             draft: tuple[int, int] | None = None) -> Image.Image:
    """The image at `path` (or in an open binary file) as an upright RGB image, decoded now.

    `draft` lets a JPEG decode at a reduced scale no smaller than that size (thumbnails).
    """
    with Image.open(path) as image:
        if draft is not None:
            image.draft("RGB", draft)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return image.convert("RGB")
