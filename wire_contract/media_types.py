"""What kind of file a client sent, read from its first bytes: both doors check it before any decoder runs.

A video sent where an image is expected (or the reverse) gets a message that says so instead of
"not an image". The model also opens a video only with the demuxer of the container its bytes
name: left to probe, FFmpeg tries every demuxer it has, playlists that open other files included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The video containers both doors take, as users name them; the model maps each to FFmpeg's demuxer.
VIDEO_FORMATS = ("mp4", "mov", "webm", "matroska", "avi")
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")


@dataclass(frozen=True)
class MediaType:
    kind: Literal["image", "video"]
    format: str  # png, jpeg, gif, webp, bmp, tiff; or one of VIDEO_FORMATS


def sniff(data: bytes) -> MediaType | None:
    """The file's kind and format from its magic bytes; None for anything else (text, audio files
    other than ISO/Matroska ones, which then fail in the decoder with their own message)."""
    head = bytes(data[:64])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return MediaType("image", "png")
    if head.startswith(b"\xff\xd8\xff"):
        return MediaType("image", "jpeg")
    if head.startswith((b"GIF87a", b"GIF89a")):
        return MediaType("image", "gif")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return MediaType("image", "webp")
    if head.startswith(b"BM") and head[6:10] == b"\0\0\0\0":
        return MediaType("image", "bmp")
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return MediaType("image", "tiff")
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return MediaType("video", "avi")
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska, and WebM when its doctype says so
        return MediaType("video", "webm" if b"webm" in head else "matroska")
    if head[4:8] in _ISO_BOXES:  # ISO base media (MP4) and QuickTime: a box size, then its type
        return MediaType("video", "mov" if head[4:12] == b"ftypqt  " or head[4:8] != b"ftyp" else "mp4")
    return None
