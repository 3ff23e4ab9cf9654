"""Images are decoded safely: anything that is not a sane image gets a clear error before the model sees it."""

import io

import pytest
from backend_samples import png, truncated_jpeg
from PIL import Image

from backend_python.config import Limits
from backend_python.errors import InvalidImage, LimitExceeded
from backend_python.media import decode_image

pytestmark = pytest.mark.unit
LIMITS = Limits(max_image_bytes=200_000, max_image_pixels=1000 * 1000)


def test_a_png_decodes_to_rgb():
    image = decode_image(png(30, 20), LIMITS)
    assert image.mode == "RGB" and image.size == (30, 20)


def test_a_jpeg_with_alpha_free_palette_decodes():
    buf = io.BytesIO()
    Image.new("P", (10, 10)).save(buf, "GIF")
    assert decode_image(buf.getvalue(), LIMITS).mode == "RGB"


def test_bytes_that_are_not_an_image_are_rejected():
    with pytest.raises(InvalidImage, match="not an image"):
        decode_image(b"hello, I am text", LIMITS)


def test_an_empty_image_is_rejected():
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"", LIMITS)


def test_a_truncated_image_is_rejected():
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        decode_image(truncated_jpeg(), LIMITS)


def test_an_image_over_the_pixel_limit_is_refused_from_its_header():
    buf = io.BytesIO()
    Image.new("1", (2000, 1000)).save(buf, "PNG")
    with pytest.raises(LimitExceeded, match="2000x1000 = 2000000 pixels, at most 1000000"):
        decode_image(buf.getvalue(), LIMITS)


def test_a_decompression_bomb_is_refused():
    # 20000 x 20000 pixels of one colour compress to a few kilobytes.
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 200_000
    with pytest.raises(LimitExceeded, match="decompression bomb|400000000 pixels"):
        decode_image(buf.getvalue(), LIMITS)


def test_an_image_over_the_byte_limit_is_rejected():
    with pytest.raises(LimitExceeded, match="bytes"):
        decode_image(b"\x89PNG" + b"0" * 300_000, LIMITS)
