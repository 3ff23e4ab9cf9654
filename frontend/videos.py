"""Video checks the frontend can make without decoding: the byte cap and the container named by the file's
first bytes. Decoding, with every limit a header answers, is the model's (it has PyAV; this image does not)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from frontend.errors import FrontendError, InvalidRequest, VideoTooLarge
from frontend.media import check_size
from wire_contract.media_types import VIDEO_FORMATS, sniff


@dataclass(frozen=True)
class VideoLimits:
    kind: ClassVar[str] = "video"
    too_large: ClassVar[type[FrontendError]] = VideoTooLarge
    max_bytes: int


def check_video(data: bytes, limits: VideoLimits, *, param: str) -> bytes:
    """The bytes if they are a video container the model reads, else a clear error."""
    check_size(data, limits, param=param)
    kind = sniff(data)
    if kind is not None and kind.kind == "image":
        raise InvalidRequest(f"video is an image ({kind.format}), not a video: send it as an image_url part",
                             param=param)
    if kind is None:
        raise InvalidRequest(f"video could not be read: not a supported container ({', '.join(VIDEO_FORMATS)})",
                             param=param)
    return data
