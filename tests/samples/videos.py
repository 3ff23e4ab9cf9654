"""Videos the tests make: frames drawn with Pillow, encoded with the pinned PyAV (FFmpeg's own encoders).

Besides clips of any size, length and container, the files a client might send by mistake or
on purpose: a truncated clip, an audio-only file, and headers that claim hours of video or
16K x 16K frames while the file holds a few small frames.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np
from PIL import Image, ImageDraw

# container -> (PyAV format, encoder, pixel format)
CONTAINERS = {
    "mp4": ("mp4", "libx264", "yuv420p"),
    "mov": ("mov", "libx264", "yuv420p"),
    "webm": ("webm", "libvpx-vp9", "yuv420p"),
    "avi": ("avi", "mpeg4", "yuv420p"),
}


def frame(index: int, count: int, size: tuple[int, int], colour=(230, 40, 40)) -> Image.Image:
    """A square crossing a dark scene from left to right: each frame differs from the others."""
    width, height = size
    image = Image.new("RGB", size, (20, 30, 60))
    draw = ImageDraw.Draw(image)
    side = max(4, min(size) // 4)
    x = int(index / max(1, count - 1) * (width - side))
    draw.rectangle((x, height // 3, x + side, height // 3 + side), fill=colour)
    draw.rectangle((0, height * 4 // 5, width, height), fill=(30, 140, 50))
    return image


def clip(seconds: float = 2.0, fps: int = 10, size: tuple[int, int] = (128, 96), container: str = "mp4",
         colour=(230, 40, 40)) -> bytes:
    fmt, codec, pix_fmt = CONTAINERS[container]
    count = max(1, round(seconds * fps))
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = *size, pix_fmt
        for i in range(count):
            out.mux(stream.encode(av.VideoFrame.from_image(frame(i, count, size, colour))))
        out.mux(stream.encode())
    return buffer.getvalue()


def truncated(data: bytes) -> bytes:
    """The first half of a file, as an interrupted upload leaves it."""
    return data[: len(data) // 2]


def audio_only(seconds: float = 1.0) -> bytes:
    """An MP4 (M4A) holding an AAC sound track and no video."""
    rate = 44100
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate)
        samples = np.sin(np.linspace(0, 440 * 2 * np.pi * seconds, int(rate * seconds), dtype=np.float32))
        for start in range(0, len(samples), 1024):
            chunk = samples[start:start + 1024][None]
            audio = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
            audio.sample_rate, audio.pts = rate, start
            out.mux(stream.encode(audio))
        out.mux(stream.encode())
    return buffer.getvalue()


def claiming_hours(hours: float = 5.0) -> bytes:
    """Two small frames, the second stamped ``hours`` after the first: the header says hours."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.time_base = Fraction(1, 1)
        for i, pts in enumerate((0, int(hours * 3600))):
            picture = av.VideoFrame.from_image(frame(i, 2, (64, 64)))
            picture.pts = pts
            out.mux(stream.encode(picture))
        out.mux(stream.encode())
    return buffer.getvalue()


def claiming_frame_size(width: int = 16000, height: int = 16000) -> bytes:
    """An AVI of four 16x16 FFV1 frames whose headers (avih and the stream's BITMAPINFOHEADER) claim
    ``width`` x ``height``. FFmpeg keeps header sizes up to its own bound (just under 16384 x 16384),
    so 16000 x 16000 is the largest claim a demuxer reports as such."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="avi") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(4):
            out.mux(stream.encode(av.VideoFrame.from_image(frame(i, 4, (16, 16)))))
        out.mux(stream.encode())
    data = bytearray(buffer.getvalue())
    struct.pack_into("<ii", data, data.index(b"strf") + 12, width, height)
    struct.pack_into("<II", data, data.index(b"avih") + 40, width, height)
    return bytes(data)
