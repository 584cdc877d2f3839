"""The one way the project opens an image file: fully decoded, EXIF orientation applied, RGB.

Phones store portraits as landscape pixels plus an EXIF orientation tag; ignoring the tag feeds a
model a rotated picture. Every stage and model loader decodes through `load_rgb`.
"""

from __future__ import annotations

import os

from PIL import Image, ImageOps


def load_rgb(path: str | os.PathLike[str], draft: tuple[int, int] | None = None) -> Image.Image:
    """The image at `path` as an upright RGB image (decoded now, the file closed).

    `draft` lets a JPEG decode at a reduced scale no smaller than that size (thumbnails).
    """
    with Image.open(path) as image:
        if draft is not None:
            image.draft("RGB", draft)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return image.convert("RGB")
