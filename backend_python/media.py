"""Decoding client images safely before they reach the processor."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from .config import Limits
from .errors import InvalidImage, LimitExceeded


def decode_image(data: bytes, limits: Limits, index: int = 0) -> Image.Image:
    """An RGB image, or a clear error: not an image, truncated, a bomb, or too large."""
    where = f"images[{index}]"
    if not data:
        raise InvalidImage(f"invalid image: {where} is empty")
    if len(data) > limits.max_image_bytes:
        raise LimitExceeded(
            f"invalid image: {where} has {len(data)} bytes, at most {limits.max_image_bytes}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            # The header gives the size before any pixel is decoded: refuse bombs here.
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise LimitExceeded(
                    f"invalid image: {where} is {width}x{height} = {width * height} pixels, "
                    f"at most {limits.max_image_pixels}"
                )
            image.load()
    except LimitExceeded:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise LimitExceeded(f"invalid image: {where} is a decompression bomb") from None
    except UnidentifiedImageError:
        raise InvalidImage(f"invalid image: {where} is not an image in a known format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"invalid image: {where} is truncated or corrupt ({exc})") from None
    if width < 1 or height < 1:
        raise InvalidImage(f"invalid image: {where} has no pixels")
    if getattr(image, "is_animated", False):
        image.seek(0)
    return image.convert("RGB")
