import base64

import pytest

from frontend.errors import ImageTooLarge, InvalidRequest
from frontend.images import CheckedImages, ImageLimits, check_image
from frontend.media import decode_data_url

from frontend_samples import data_url, jpeg_bytes, png_bytes

pytestmark = pytest.mark.unit

LIMITS = ImageLimits(max_bytes=64 * 1024, max_pixels=100 * 100)


def test_a_png_data_url_is_decoded_and_accepted():
    raw = png_bytes()
    data = decode_data_url(data_url(raw), LIMITS, param="p")
    checked = check_image(data, LIMITS, param="p")
    assert (checked.data, checked.format, checked.width, checked.height) == (raw, "PNG", 32, 24)


def test_jpeg_is_accepted_whatever_the_declared_mime_type():
    checked = check_image(decode_data_url(data_url(jpeg_bytes(), "image/png"), LIMITS, param="p"), LIMITS, param="p")
    assert checked.format == "JPEG"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://example.com/cat.png", "must be a data: URL"),
        ("data:image/png,notbase64", "base64-encoded"),
        ("data:text/plain;base64,aGVsbG8=", "unsupported media type"),
        ("data:image/png;base64,@@@not-base64@@@", "not valid base64"),
    ],
)
def test_malformed_data_urls_are_invalid_requests(url, message):
    with pytest.raises(InvalidRequest, match=message) as caught:
        decode_data_url(url, LIMITS, param="messages[0].content[1].image_url")
    assert caught.value.param == "messages[0].content[1].image_url"


def test_oversized_payload_is_refused_before_decoding():
    url = "data:image/png;base64," + base64.b64encode(b"\0" * (LIMITS.max_bytes + 100)).decode()
    with pytest.raises(ImageTooLarge, match="larger than the limit"):
        decode_data_url(url, LIMITS, param="p")


def test_too_many_pixels_is_image_too_large():
    with pytest.raises(ImageTooLarge, match="101x100"):
        check_image(png_bytes(101, 100), LIMITS, param="p")


def test_too_many_bytes_is_image_too_large():
    with pytest.raises(ImageTooLarge, match="bytes"):
        check_image(b"\x89PNG" + b"\0" * LIMITS.max_bytes, LIMITS, param="p")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, I am text", "not a supported image"),
        (png_bytes(64, 64)[:-60], "corrupt or truncated"),
    ],
)
def test_corrupt_or_non_image_data_is_an_invalid_request(data, message):
    with pytest.raises(InvalidRequest, match=message):
        check_image(data, LIMITS, param="p")


def test_an_image_sent_again_is_not_checked_again_and_a_refused_one_is_never_remembered():
    checked = CheckedImages(LIMITS, size=2)
    first, second, third = png_bytes(32, 24), png_bytes(24, 32), jpeg_bytes()
    assert checked.check(first, param="p") == check_image(first, LIMITS, param="p")
    assert first in checked and checked.check(first, param="p").data is first
    truncated = png_bytes(64, 64)[:-60]
    for _ in range(2):
        with pytest.raises(InvalidRequest, match="corrupt or truncated"):
            checked.check(truncated, param="p")
    assert truncated not in checked
    checked.check(second, param="p")
    checked.check(first, param="p")  # the most recent again
    checked.check(third, param="p")  # over the size: the least recently seen goes
    assert first in checked and third in checked and second not in checked
