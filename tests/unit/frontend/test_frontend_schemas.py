import pytest
from pydantic import ValidationError

from frontend.schemas import ChatCompletionChunk, ChatCompletionRequest, ImagePart, TextPart, UserMessage

pytestmark = pytest.mark.unit


def _request(**fields):
    return ChatCompletionRequest.model_validate(
        {"model": "qwen3-vl", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_openai_style_multimodal_request_parses_into_typed_parts():
    request = ChatCompletionRequest.model_validate({
        "model": "qwen3-vl",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ]},
            {"role": "assistant", "content": None},
        ],
        "max_tokens": 16,
        "stop": "END",
        "stream": True,
        "stream_options": {"include_usage": True},
        "frequency_penalty": 0.5,
    })
    user = request.messages[1]
    assert isinstance(user, UserMessage)
    assert isinstance(user.content[0], TextPart) and isinstance(user.content[1], ImagePart)
    assert request.stop_list() == ["END"]
    assert request.requested_max_tokens() == 16


def test_max_completion_tokens_wins_over_max_tokens():
    assert _request(max_tokens=5, max_completion_tokens=7).requested_max_tokens() == 7


@pytest.mark.parametrize(
    "fields",
    [
        {"messages": []},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]},
        {"max_tokens": 0},
        {"temperature": -0.1},
        {"temperature": 2.5},
        {"top_p": 0},
        {"top_p": 1.5},
        {"seed": 2**63},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stop": [""]},
        {"n": 2},
        {"model": ""},
    ],
)
def test_out_of_range_or_malformed_fields_are_rejected(fields):
    with pytest.raises(ValidationError):
        _request(**fields)


def test_stream_chunk_serialises_in_the_openai_shape():
    chunk = ChatCompletionChunk.model_validate(
        {"id": "c1", "created": 1, "model": "m", "choices": [{"delta": {"content": "he"}}]}
    )
    body = chunk.model_dump()
    assert body["object"] == "chat.completion.chunk"
    assert body["choices"][0] == {"index": 0, "delta": {"role": None, "content": "he"}, "finish_reason": None}
