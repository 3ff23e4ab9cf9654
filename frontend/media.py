"""How an image or a video reaches the frontend: a base64 data: URL, or an allow-listed http(s) URL, both
stopped at the kind's byte cap before more is read. What the bytes are is checked by images.py and
videos.py."""

from __future__ import annotations

import base64
import binascii
import re
from typing import ClassVar, Protocol
from urllib.parse import urlsplit

import httpx

from frontend.errors import FrontendError, InvalidRequest

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
_EXAMPLE = {"image": "data:image/png;base64,...", "video": "data:video/mp4;base64,..."}


class MediaLimits(Protocol):
    kind: ClassVar[str]  # "image" or "video": the part is `{kind}_url`
    too_large: ClassVar[type[FrontendError]]
    max_bytes: int


def check_size(data: bytes, limits: MediaLimits, *, param: str) -> None:
    """Not empty and within the kind's byte cap: the first check of the bytes, whichever way they came."""
    if len(data) > limits.max_bytes:
        raise limits.too_large(f"{limits.kind} is {len(data)} bytes; the limit is {limits.max_bytes}", param=param)
    if not data:
        raise InvalidRequest(f"{limits.kind} is empty", param=param)


def decode_data_url(url: str, limits: MediaLimits, *, param: str) -> bytes:
    """Bytes of a base64 `data:` URL; the size cap is checked before decoding."""
    kind = limits.kind
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidRequest(f"{kind}_url must be a data: URL such as {_EXAMPLE[kind]}", param=param)
    if not match.group("b64"):
        raise InvalidRequest(f"{kind} data: URLs must be base64-encoded (;base64,)", param=param)
    mime = (match.group("mime") or "").lower()
    if mime and not mime.startswith(f"{kind}/"):
        other = next((k for k in _EXAMPLE if mime.startswith(f"{k}/")), None)
        hint = f"send it as {_a(other)}_url part" if other else f"send {_a(kind)}"
        raise InvalidRequest(f"unsupported media type {mime!r} for {kind}_url; {hint}", param=param)
    payload = url[match.end():]
    if len(payload) * 3 // 4 > limits.max_bytes + 3:
        raise limits.too_large(f"{kind} is larger than the limit of {limits.max_bytes} bytes", param=param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{kind} data is not valid base64", param=param) from None
    return data


async def fetch_remote(
    url: str, limits: MediaLimits, *, allowed_hosts: list[str], timeout_s: float, param: str
) -> bytes:
    """Fetch an allow-listed http(s) file with a timeout, stopping at the byte cap."""
    kind = limits.kind
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"remote {kind} URLs must be http(s) with a host name", param=param)
    if parts.hostname.lower() not in {host.lower() for host in allowed_hosts}:
        raise InvalidRequest(f"host {parts.hostname!r} is not on the media allow-list", param=param)
    chunks: list[bytes] = []
    total = 0
    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise InvalidRequest(f"fetching the {kind} returned HTTP {response.status_code}", param=param)
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > limits.max_bytes:
                        raise limits.too_large(
                            f"remote {kind} is larger than the limit of {limits.max_bytes} bytes", param=param
                        )
                    chunks.append(chunk)
    except httpx.TimeoutException:
        raise InvalidRequest(f"fetching the {kind} took longer than {timeout_s} s", param=param) from None
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"fetching the {kind} failed: {type(exc).__name__}", param=param) from None
    return b"".join(chunks)


def _a(kind: str) -> str:
    return f"an {kind}" if kind == "image" else f"a {kind}"
