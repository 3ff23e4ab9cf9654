"""Videos through the OpenAI-compatible API of a real frontend process and the real Triton."""

import base64

import openai
import pytest

from clients.triton_stream import build_inputs, stream, user_turn
from frontend_harness import MODEL, data_url, png_bytes
from tests.samples import videos

pytestmark = pytest.mark.integration

CLIP = videos.clip(3.0, fps=10, size=(160, 96))


def video_url(data: bytes, mime: str = "video/mp4") -> dict:
    return {"type": "video_url", "video_url": {"url": f"data:{mime};base64," + base64.b64encode(data).decode()}}


def question(*parts: dict, text: str = "What happens in this video?") -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


@pytest.fixture
def client(frontend) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{frontend.url}/v1", api_key="unused", max_retries=0)


def test_the_openai_package_with_a_video_whole_and_streamed(client, triton):
    messages = question(video_url(CLIP))
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
    assert whole.choices[0].finish_reason in ("stop", "length") and whole.usage.completion_tokens >= 1
    direct = stream(triton.grpc_url, build_inputs(user_turn("What happens in this video?", 0, 1), [], [CLIP],
                                                  max_tokens=12))
    # The video's tokens count in the usage: 3 pairs of frames x 15 tokens, and their timestamps.
    assert whole.usage.prompt_tokens == direct.prompt_tokens > direct.visual_tokens == 45
    assert whole.choices[0].message.content == direct.text

    chunks = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert len(pieces) > 1 and "".join(pieces) == whole.choices[0].message.content
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_a_video_and_an_image_in_one_turn(client, triton):
    picture, clip = png_bytes(120, 80, "teal"), videos.clip(2.0, container="webm")
    messages = question({"type": "image_url", "image_url": {"url": data_url(picture)}},
                        video_url(clip, "video/webm"), text="Is the picture in the video?")
    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
    turn = [{"role": "user", "content": [{"type": "image", "image": 0}, {"type": "video", "video": 0},
                                         {"type": "text", "text": "Is the picture in the video?"}]}]
    direct = stream(triton.grpc_url, build_inputs(turn, [picture], [clip], max_tokens=12))
    assert answer.choices[0].message.content == direct.text
    assert answer.usage.prompt_tokens == direct.prompt_tokens > direct.visual_tokens > 64


BAD = [
    (video_url(b"these are words, not a video"), 400, "not a supported container"),
    ({"type": "image_url", "image_url": {"url": data_url(CLIP)}}, 400, "image is a video (mp4), not an image"),
    (video_url(CLIP, "image/png"), 400, "send it as an image_url part"),
    (video_url(png_bytes()), 400, "video is an image (png), not a video"),
    (video_url(videos.truncated(CLIP)), 400, "videos[0] is truncated or corrupt"),
    (video_url(videos.audio_only(), "audio/mp4"), 400, "send a video"),
    (video_url(videos.audio_only()), 400, "videos[0] has no video stream (it holds audio only)"),
    (video_url(videos.claiming_hours(5)), 400, "videos[0] lasts 18,001.0 s, at most 600 s"),
    (video_url(videos.claiming_frame_size(16000, 16000)), 400, "16000x16000 = 256000000 pixels"),
    (video_url(b"\x00\x00\x00\x18ftypmp42" + bytes(1024 * 1024)), 413, "larger than the limit of 1048576 bytes"),
]


@pytest.mark.parametrize("part, status, message", BAD, ids=[m for _, _, m in BAD])
def test_a_bad_video_gets_a_clear_error_and_the_next_request_succeeds(http, part, status, message):
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": question(part), "max_tokens": 4})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    good = http.post("/v1/chat/completions", json={"model": MODEL, "messages": question(video_url(CLIP)),
                                                    "max_tokens": 4})
    assert good.status_code == 200, good.text
