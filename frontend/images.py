"""Image checks: what an image's bytes are, with Pillow (header first), before Triton sees them."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import ClassVar

from PIL import Image, UnidentifiedImageError

from frontend.errors import FrontendError, ImageTooLarge, InvalidRequest
from frontend.media import check_size
from wire_contract.media_types import sniff

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"})


@dataclass(frozen=True)
class ImageLimits:
    kind: ClassVar[str] = "image"
    too_large: ClassVar[type[FrontendError]] = ImageTooLarge
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    format: str
    width: int
    height: int


def check_image(data: bytes, limits: ImageLimits, *, param: str) -> CheckedImage:
    """Reject oversized, corrupt or non-image data; decoding happens only after the pixel check."""
    check_size(data, limits, param=param)
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
            fmt = header.format or ""
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"image has more than {limits.max_pixels} pixels", param=param) from None
    except (UnidentifiedImageError, OSError, ValueError):
        kind = sniff(data)
        if kind is not None and kind.kind == "video":
            raise InvalidRequest(f"image is a video ({kind.format}), not an image: send it as a video_url part",
                                 param=param) from None
        raise InvalidRequest("image could not be read: not a supported image file", param=param) from None
    if fmt not in ALLOWED_FORMATS:
        raise InvalidRequest(f"image format {fmt or 'unknown'} is not supported", param=param)
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}", param=param
        )
    try:
        with Image.open(io.BytesIO(data)) as full:
            full.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise InvalidRequest("image is corrupt or truncated", param=param) from None
    return CheckedImage(data=data, format=fmt, width=width, height=height)
