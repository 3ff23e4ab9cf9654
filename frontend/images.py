"""Image intake: data: URLs (and allow-listed remote URLs), checked with Pillow before Triton sees them."""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from frontend.errors import ImageTooLarge, InvalidRequest

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"})


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    format: str
    width: int
    height: int


def decode_data_url(url: str, limits: ImageLimits, *, param: str) -> bytes:
    """Bytes of a base64 `data:` URL; the size cap is checked before decoding."""
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidRequest("image_url must be a data: URL such as data:image/png;base64,...", param=param)
    if not match.group("b64"):
        raise InvalidRequest("image data: URLs must be base64-encoded (;base64,)", param=param)
    mime = (match.group("mime") or "").lower()
    if mime and not mime.startswith("image/"):
        raise InvalidRequest(f"unsupported media type {mime!r}; send an image", param=param)
    payload = url[match.end():]
    if len(payload) * 3 // 4 > limits.max_bytes + 3:
        raise ImageTooLarge(
            f"image is larger than the limit of {limits.max_bytes} bytes", param=param
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("image data is not valid base64", param=param) from None
    return data


def check_image(data: bytes, limits: ImageLimits, *, param: str) -> CheckedImage:
    """Reject oversized, corrupt or non-image data; decoding happens only after the pixel check."""
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes}", param=param)
    if not data:
        raise InvalidRequest("image is empty", param=param)
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
            fmt = header.format or ""
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"image has more than {limits.max_pixels} pixels", param=param) from None
    except (UnidentifiedImageError, OSError, ValueError):
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


async def fetch_remote(
    url: str, limits: ImageLimits, *, allowed_hosts: list[str], timeout_s: float, param: str
) -> bytes:
    """Fetch an allow-listed http(s) image with a timeout, stopping at the byte cap."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("remote image URLs must be http(s) with a host name", param=param)
    if parts.hostname.lower() not in {host.lower() for host in allowed_hosts}:
        raise InvalidRequest(f"host {parts.hostname!r} is not on the image allow-list", param=param)
    chunks: list[bytes] = []
    total = 0
    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise InvalidRequest(f"fetching the image returned HTTP {response.status_code}", param=param)
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > limits.max_bytes:
                        raise ImageTooLarge(
                            f"remote image is larger than the limit of {limits.max_bytes} bytes", param=param
                        )
                    chunks.append(chunk)
    except httpx.TimeoutException:
        raise InvalidRequest(f"fetching the image took longer than {timeout_s} s", param=param) from None
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"fetching the image failed: {type(exc).__name__}", param=param) from None
    return b"".join(chunks)
