"""OpenAI request → GenerationRequest, as the service does it before anything reaches Triton."""

import pytest

from frontend.chat import ChatService
from frontend.errors import ImageTooLarge, InvalidRequest, ModelNotFound
from frontend.metrics import FrontendMetrics
from frontend.schemas import ChatCompletionRequest
from frontend.settings import Settings
from frontend.triton_client import TritonClient
from frontend_samples import data_url, png_bytes

pytestmark = pytest.mark.unit


@pytest.fixture
def service():
    settings = Settings(max_images_per_request=2, max_image_pixels=64 * 64, max_tokens_limit=100, default_max_tokens=10)
    metrics = FrontendMetrics()
    return ChatService(settings, TritonClient(settings, metrics), metrics)


def _request(messages, **fields):
    return ChatCompletionRequest.model_validate({"model": "qwen3-vl", "messages": messages, **fields})


async def test_conversation_with_images_becomes_triton_turns_and_indexed_images(service):
    first, second = png_bytes(8, 8, "red"), png_bytes(9, 9, "green")
    body = _request(
        [
            {"role": "system", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(first)}},
                {"type": "text", "text": "and this?"},
                {"type": "image_url", "image_url": {"url": data_url(second)}},
            ]},
            {"role": "assistant", "content": "a square"},
            {"role": "user", "content": "colour?"},
        ],
        temperature=0.3,
        seed=5,
        stop=["\n\n"],
        stream=True,
    )
    generation = await service.prepare(body)
    assert generation.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "image", "image": 0}, {"type": "text", "text": "and this?"}, {"type": "image", "image": 1},
        ]},
        {"role": "assistant", "content": "a square"},
        {"role": "user", "content": "colour?"},
    ]
    assert generation.images == [first, second]
    params = generation.params
    assert (params.max_tokens, params.temperature, params.top_p, params.seed, params.stop, params.stream) == (
        10, 0.3, 1.0, 5, ("\n\n",), True,
    )
    assert generation.request_id.startswith("chatcmpl-")


async def test_unknown_model_is_refused(service):
    with pytest.raises(ModelNotFound):
        await service.prepare(_request([{"role": "user", "content": "x"}]).model_copy(update={"model": "gpt-4"}))


async def test_max_tokens_above_the_limit_is_refused(service):
    with pytest.raises(InvalidRequest, match="limit is 100") as caught:
        await service.prepare(_request([{"role": "user", "content": "x"}], max_tokens=101))
    assert caught.value.param == "max_tokens"


async def test_too_many_images_are_refused_before_any_is_decoded(service):
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(InvalidRequest, match="3 images"):
        await service.prepare(_request([{"role": "user", "content": [part, part, part]}]))


async def test_image_over_the_pixel_cap_is_refused(service):
    part = {"type": "image_url", "image_url": {"url": data_url(png_bytes(65, 64))}}
    with pytest.raises(ImageTooLarge) as caught:
        await service.prepare(_request([{"role": "user", "content": [{"type": "text", "text": "x"}, part]}]))
    assert caught.value.param == "messages[0].content[1].image_url"


async def test_remote_urls_are_refused_when_off(service):
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(InvalidRequest, match="remote image URLs are disabled"):
        await service.prepare(_request([{"role": "user", "content": [part]}]))


async def test_text_that_cannot_fit_the_models_prompt_limit_is_refused_first():
    """FRONTEND_MAX_PROMPT_TOKENS x 128 characters over every turn (wire_contract/text_budget.py), checked
    before the model name, the limits or any image: a 400 that names the limit."""
    settings = Settings(max_prompt_tokens=2)
    metrics = FrontendMetrics()
    service = ChatService(settings, TritonClient(settings, metrics), metrics)
    fits = _request([{"role": "system", "content": [{"type": "text", "text": "s" * 56}]},
                     {"role": "assistant", "content": "a" * 100},
                     {"role": "user", "content": [{"type": "text", "text": "u" * 100},
                                                  {"type": "image_url", "image_url": {"url": data_url(png_bytes(8, 8))}}]}])
    assert (await service.prepare(fits)).messages
    oversized = _request([{"role": "user", "content": "u" * 257}]).model_copy(update={"model": "gpt-4"})
    with pytest.raises(InvalidRequest) as refused:
        await service.prepare(oversized)
    assert refused.value.param == "messages"
    assert "257 characters" in refused.value.message and "at most 2 tokens holds at most 256" in refused.value.message
