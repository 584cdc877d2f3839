"""Decode-once validation of an image's bytes, returning its facts or the reason it is rejected."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from affectflow.core.images import allow_pixels, upright_size


@dataclass(frozen=True)
class ImageFacts:
    width: int  # as displayed: EXIF orientation applied, so a rotated portrait is taller than wide
    height: int
    format: str
    sha256: str


@dataclass(frozen=True)
class ImageProblem:
    reason: str
    detail: str


def check_image(data: bytes, min_side: int, max_pixels: int) -> ImageFacts | ImageProblem:
    """Hash the file's bytes and fully decode them (truncation shows only on decode).

    `max_pixels` is the limit in both directions: lower than Pillow's own decompression-bomb
    limit, it rejects more; higher, Pillow's limit is raised to it.
    """
    if not data:
        return ImageProblem("zero_byte_image", "the file is empty")
    digest = hashlib.sha256(data).hexdigest()
    allow_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > max_pixels:
                    return ImageProblem("image_too_large", f"{image.width}x{image.height} exceeds "
                                                           f"max_image_pixels={max_pixels}")
                image.load()
                width, height = upright_size(image)
                fmt = image.format or "unknown"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return ImageProblem("image_too_large", str(error))
    except UnidentifiedImageError:
        return ImageProblem("unreadable_image", "not a recognised image format")
    except (OSError, SyntaxError, ValueError) as error:
        message = str(error)
        reason = "truncated_image" if "truncated" in message.lower() else "unreadable_image"
        return ImageProblem(reason, message)
    if min(width, height) < min_side:
        return ImageProblem("image_too_small", f"{width}x{height} below min_image_side={min_side}")
    return ImageFacts(width=width, height=height, format=fmt, sha256=digest)
