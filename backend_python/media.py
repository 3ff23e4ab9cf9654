"""Decoding client images and videos safely before they reach the processor.

Every limit that a file's header can answer is checked before its pixels are decoded: an
image's size, a video's container, frame size, frame rate and length (its frames counted from
the container's packets). Videos are read with PyAV (FFmpeg's libraries).
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from wire_contract.media_types import VIDEO_FORMATS, sniff

from .config import Limits
from .errors import InvalidImage, InvalidVideo, LimitExceeded

# FFmpeg's demuxer for each container both doors take.
DEMUXERS = {"mp4": "mov", "mov": "mov", "webm": "matroska", "matroska": "matroska", "avi": "avi"}


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
        kind = sniff(data)
        if kind is not None and kind.kind == "video":
            raise InvalidImage(f"invalid image: {where} is a video ({kind.format}), not an image: send it in "
                               "'videos' as a video part") from None
        raise InvalidImage(f"invalid image: {where} is not an image in a known format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"invalid image: {where} is truncated or corrupt ({exc})") from None
    if width < 1 or height < 1:
        raise InvalidImage(f"invalid image: {where} has no pixels")
    if getattr(image, "is_animated", False):
        image.seek(0)
    return image.convert("RGB")


@dataclass(frozen=True)
class VideoHeader:
    """What a video's container says, read before any frame is decoded."""

    format: str  # one of wire_contract.media_types.VIDEO_FORMATS
    width: int
    height: int
    fps: float
    frames: int  # counted from the container's packets, not taken from its header
    seconds: float


def probe_video(data: bytes, limits: Limits, index: int = 0) -> VideoHeader:
    """A video's size, rate, frames and length, or a clear error: not a video, no video stream,
    too long, frames too large, truncated or corrupt. Reads headers and packets, decodes nothing."""
    where = f"videos[{index}]"
    if not data:
        raise InvalidVideo(f"invalid video: {where} is empty")
    if len(data) > limits.max_video_bytes:
        raise LimitExceeded(f"invalid video: {where} has {len(data)} bytes, at most {limits.max_video_bytes}")
    kind = sniff(data)
    if kind is None or kind.kind != "video":
        what = f"an image ({kind.format}), not a video: send it as an image part" if kind else \
            f"not a video in a supported container ({', '.join(VIDEO_FORMATS)})"
        raise InvalidVideo(f"invalid video: {where} is {what}")
    try:
        with _open(data, kind.format) as container:
            if not container.streams.video:
                audio = " (it holds audio only)" if container.streams.audio else ""
                raise InvalidVideo(f"invalid video: {where} has no video stream{audio}")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width < 1 or height < 1:
                raise InvalidVideo(f"invalid video: {where} has no frame size in its header")
            if width * height > limits.max_video_frame_pixels:
                raise LimitExceeded(f"invalid video: {where} has frames of {width}x{height} = {width * height} "
                                    f"pixels, at most {limits.max_video_frame_pixels}")
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            if not 0 < fps < 1000:
                raise InvalidVideo(f"invalid video: {where} has no usable frame rate in its header")
            seconds = _header_seconds(container, stream)
            _check_seconds(seconds, limits, where)
            # The header's frame count can be missing (WebM) or false: the packets are counted, and
            # no more of them than the longest allowed video holds.
            most = math.ceil(limits.max_video_seconds * fps) + 1
            frames = 0
            for packet in container.demux(stream):
                frames += packet.size > 0
                if frames > most:
                    _check_seconds(frames / fps, limits, where)
    except _av().FFmpegError as exc:
        raise InvalidVideo(f"invalid video: {where} is truncated or corrupt ({exc.strerror or exc})") from None
    if frames < 2:
        raise InvalidVideo(f"invalid video: {where} has {frames} frame(s), at least 2 are needed "
                           "(send a still picture as an image)")
    _check_seconds(frames / fps, limits, where)
    return VideoHeader(kind.format, width, height, fps, frames, max(seconds, frames / fps))


def decode_video(data: bytes, header: VideoHeader, indices: Sequence[int], index: int = 0) -> np.ndarray:
    """The frames at ``indices`` (ascending), as RGB arrays (frames, height, width, 3) of the header's size.
    Decodes up to the last one and converts only those."""
    where = f"videos[{index}]"
    frames: list[np.ndarray] = []
    wanted = list(indices)
    try:
        with _open(data, header.format) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for number, picture in enumerate(container.decode(stream)):
                while len(frames) < len(wanted) and wanted[len(frames)] == number:
                    frames.append(picture.to_ndarray(format="rgb24", width=header.width, height=header.height))
                if len(frames) == len(wanted):
                    break
    except _av().FFmpegError as exc:
        raise InvalidVideo(f"invalid video: {where} is truncated or corrupt ({exc.strerror or exc})") from None
    if len(frames) < len(wanted):
        raise InvalidVideo(f"invalid video: {where} is truncated or corrupt: frame {wanted[len(frames)]} of "
                           f"{header.frames} could not be decoded")
    return np.stack(frames)


@functools.cache
def _av():
    """PyAV, imported with the first video: a server that is only sent images never loads FFmpeg."""
    import av

    return av


def _open(data: bytes, format: str):
    """Only the demuxer of the container the bytes name (FFmpeg's own probing would try them all)."""
    return _av().open(io.BytesIO(data), format=DEMUXERS[format])


def _header_seconds(container, stream) -> float:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / _av().time_base if container.duration is not None else 0.0


def _check_seconds(seconds: float, limits: Limits, where: str) -> None:
    if seconds > limits.max_video_seconds:
        raise LimitExceeded(f"invalid video: {where} lasts {seconds:,.1f} s, at most {limits.max_video_seconds:g} s")
