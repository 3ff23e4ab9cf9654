"""Image checks: what an image's bytes are, with Pillow (header first), before Triton sees them."""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
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


class CheckedImages:
    """Digests of the images that passed ``check_image`` lately, so that one sent again is not decoded
    again: a chat sends its images with every turn, and checking a 4032x3024 photo decodes it whole
    (about 0.1 s of one core). A refused image is never remembered."""

    def __init__(self, limits: ImageLimits, size: int = 1024):
        self._limits = limits
        self._size = size
        self._seen: OrderedDict[bytes, CheckedImage] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, data: bytes, *, param: str) -> CheckedImage:
        """``check_image`` for bytes not seen lately; blocking (hashing and decoding), so run in a thread."""
        key = hashlib.blake2b(data, digest_size=16).digest()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None:
                self._seen.move_to_end(key)
                return replace(seen, data=data)
        checked = check_image(data, self._limits, param=param)
        with self._lock:
            self._seen[key] = replace(checked, data=b"")
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)
        return checked

    def __contains__(self, data: bytes) -> bool:
        return hashlib.blake2b(data, digest_size=16).digest() in self._seen
