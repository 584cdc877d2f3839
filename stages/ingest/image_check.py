"""Decode-once validation of an image file, returning its facts or the reason it is rejected."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class ImageFacts:
    width: int
    height: int
    format: str
    sha256: str


@dataclass(frozen=True)
class ImageProblem:
    reason: str
    detail: str


def check_image(path: Path, min_side: int, max_pixels: int) -> ImageFacts | ImageProblem:
    """Read the file once, hash its bytes and fully decode it (truncation shows only on decode)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ImageProblem("missing_image", str(path))
    except OSError as error:
        return ImageProblem("unreadable_image", f"{path}: {error}")
    if not data:
        return ImageProblem("zero_byte_image", str(path))
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    return ImageProblem("image_too_large",
                                        f"{width}x{height} exceeds max_image_pixels={max_pixels}")
                image.load()
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
