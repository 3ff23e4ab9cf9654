"""Videos are read safely: headers answer every limit before a frame is decoded, and anything that is not
a sane video gets a clear error naming the problem."""

import re
import time

import numpy as np
import pytest
from backend_samples import png

from backend_python.config import Limits
from backend_python.errors import InvalidImage, InvalidVideo, LimitExceeded
from backend_python.media import decode_image, decode_video, probe_video
from tests.samples import videos

pytestmark = pytest.mark.unit
LIMITS = Limits(max_video_bytes=2_000_000, max_video_seconds=60, max_video_frame_pixels=640 * 480)


@pytest.mark.parametrize("container", list(videos.CONTAINERS))
def test_each_container_is_read_from_its_header_and_packets(container):
    header = probe_video(videos.clip(3.0, fps=10, size=(160, 96), container=container), LIMITS)
    assert (header.format, header.width, header.height, header.fps, header.frames) == (container, 160, 96, 10.0, 30)
    assert header.seconds == pytest.approx(3.0, abs=0.11)


def test_the_frames_asked_for_are_the_ones_decoded():
    data = videos.clip(2.0, fps=10, size=(128, 96))
    frames = decode_video(data, probe_video(data, LIMITS), [0, 7, 19])
    assert frames.shape == (3, 96, 128, 3) and frames.dtype == np.uint8
    for got, index in zip(frames, (0, 7, 19)):
        drawn = np.asarray(videos.frame(index, 20, (128, 96)), dtype=np.float32)
        assert np.abs(got.astype(np.float32) - drawn).mean() < 6, index  # lossy, but this frame and no other
        other = np.asarray(videos.frame((index + 10) % 20, 20, (128, 96)), dtype=np.float32)
        assert np.abs(got.astype(np.float32) - other).mean() > 2 * np.abs(got.astype(np.float32) - drawn).mean()


BAD = [
    (b"", InvalidVideo, "videos[0] is empty"),
    (b"hello, I am a text and not a video at all", InvalidVideo, "not a video in a supported container"),
    (png(), InvalidVideo, "is an image (png), not a video"),
    (videos.truncated(videos.clip(2.0)), InvalidVideo, "truncated or corrupt"),
    (videos.audio_only(), InvalidVideo, "has no video stream (it holds audio only)"),
    (videos.claiming_hours(5), LimitExceeded, "lasts 18,001.0 s, at most 60 s"),
    (videos.claiming_frame_size(16000, 16000), LimitExceeded, "16000x16000 = 256000000 pixels, at most 307200"),
    (videos.clip(1.0, fps=10, size=(800, 600)), LimitExceeded, "800x600 = 480000 pixels, at most 307200"),
    (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 2_000_000, LimitExceeded, "bytes, at most 2000000"),
    (videos.clip(0.1, fps=10), InvalidVideo, "has 1 frame(s), at least 2 are needed"),
]


@pytest.mark.parametrize("data, error, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_videos_get_a_clear_error(data, error, message):
    with pytest.raises(error, match=re.escape(message)):
        probe_video(data, LIMITS)


def test_a_header_claiming_huge_frames_is_refused_at_once_without_decoding():
    data = videos.claiming_frame_size(16000, 16000)
    started = time.perf_counter()
    with pytest.raises(LimitExceeded):
        probe_video(data, LIMITS)
    assert time.perf_counter() - started < 0.5  # one 16000 x 16000 frame alone is 768 MB of RGB


def test_a_video_where_an_image_is_expected_is_named_as_one():
    with pytest.raises(InvalidImage, match=r"images\[2\] is a video \(mp4\), not an image"):
        decode_image(videos.clip(1.0), Limits(), 2)
