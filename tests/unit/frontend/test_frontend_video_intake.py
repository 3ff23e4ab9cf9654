"""Video intake in the frontend: the byte cap and the container, without a decoder; and a video in a turn."""

import pytest

from frontend.chat import ChatService
from frontend.errors import InvalidRequest, VideoTooLarge
from frontend.images import ImageLimits, check_image
from frontend.media import decode_data_url
from frontend.metrics import FrontendMetrics
from frontend.schemas import ChatCompletionRequest
from frontend.settings import Settings
from frontend.triton_client import TritonClient
from frontend.videos import VideoLimits, check_video
from frontend_samples import data_url, png_bytes
from tests.samples import videos

pytestmark = pytest.mark.unit

LIMITS = VideoLimits(max_bytes=64 * 1024)


@pytest.mark.parametrize("container, mime", [("mp4", "video/mp4"), ("mov", "video/quicktime"),
                                             ("webm", "video/webm"), ("avi", "video/x-msvideo")])
def test_each_supported_container_passes_as_sent(container, mime):
    clip = videos.clip(1.0, container=container)
    assert check_video(decode_data_url(data_url(clip, mime), LIMITS, param="p"), LIMITS, param="p") == clip


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", InvalidRequest, "video is empty"),
        (b"plain words, no container at all", InvalidRequest, "not a supported container (mp4, mov, webm"),
        (png_bytes(), InvalidRequest, "video is an image (png), not a video: send it as an image_url part"),
        (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64 * 1024, VideoTooLarge, "the limit is 65536"),
    ],
)
def test_what_is_not_a_video_for_the_model_is_refused_here(data, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_video(data, LIMITS, param="p")


def test_an_oversized_video_data_url_is_refused_before_decoding():
    with pytest.raises(VideoTooLarge, match="video is larger than the limit of 65536 bytes"):
        decode_data_url(data_url(b"\0" * 70_000, "video/mp4"), LIMITS, param="p")


def test_a_video_sent_as_an_image_is_named_as_one():
    with pytest.raises(InvalidRequest, match="for image_url; send it as a video_url part"):
        decode_data_url(data_url(videos.clip(1.0), "video/mp4"), ImageLimits(10**6, 10**6), param="p")
    with pytest.raises(InvalidRequest, match=r"image is a video \(mp4\), not an image: send it as a video_url part"):
        check_image(videos.clip(1.0), ImageLimits(10**6, 10**6), param="p")


@pytest.fixture
def service():
    settings = Settings(max_videos_per_request=1, max_video_bytes=64 * 1024)
    metrics = FrontendMetrics()
    return ChatService(settings, TritonClient(settings, metrics), metrics)


def _request(content):
    return ChatCompletionRequest.model_validate({"model": "qwen3-vl", "messages": [{"role": "user", "content": content}]})


async def test_a_video_and_an_image_in_one_turn_become_indexed_parts(service):
    clip, picture = videos.clip(1.0), png_bytes()
    generation = await service.prepare(_request([
        {"type": "text", "text": "Is this"}, {"type": "image_url", "image_url": {"url": data_url(picture)}},
        {"type": "text", "text": "in"}, {"type": "video_url", "video_url": {"url": data_url(clip, "video/mp4")}}]))
    assert generation.messages[0]["content"] == [
        {"type": "text", "text": "Is this"}, {"type": "image", "image": 0},
        {"type": "text", "text": "in"}, {"type": "video", "video": 0}]
    assert (generation.images, generation.videos) == ([picture], [clip])


async def test_video_count_cap_and_remote_videos_when_off(service):
    part = {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}
    with pytest.raises(InvalidRequest, match="2 videos in the request; the limit is 1"):
        await service.prepare(_request([part, part]))
    remote = {"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}}
    with pytest.raises(InvalidRequest, match="remote video URLs are disabled") as caught:
        await service.prepare(_request([remote]))
    assert caught.value.param == "messages[0].content[0].video_url"
