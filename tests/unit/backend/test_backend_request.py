"""The request contract: what clients may send, and the message they get when they may not."""

import json

import numpy as np
import pytest
from backend_samples import png, tensors, user

from backend_python.config import Limits
from backend_python.errors import InvalidRequest, LimitExceeded
from backend_python.request import GenerationChunk, GenerationRequest

pytestmark = pytest.mark.unit
LIMITS = Limits(max_images=2, max_videos=2, max_new_tokens=64, default_max_tokens=16)


def parse(t):
    return GenerationRequest.from_tensors(t, LIMITS)


def test_a_full_request_is_parsed_with_its_settings():
    req = parse(tensors(
        [{"role": "system", "content": "Be brief."}] + user("What is this?", 1), [png()],
        max_tokens=8, temperature=0.5, top_p=0.9, seed=7, stop=["\n\n"], stream=False,
    ))
    assert [m.role for m in req.messages] == ["system", "user"]
    assert req.messages[1].content[0] == {"type": "image", "image": 0}
    assert req.images[0].startswith(b"\x89PNG")
    s = req.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.seed, s.stop) == (8, 0.5, pytest.approx(0.9), 7, ("\n\n",))
    assert req.stream is False


def test_defaults_are_greedy_streaming_and_the_configured_max_tokens():
    req = parse(tensors(user("hi")))
    assert req.sampling.greedy and req.stream and req.sampling.max_tokens == 16


@pytest.mark.parametrize(
    "messages, fragment",
    [
        ("not json", "not valid JSON"),
        ([], "non-empty JSON list"),
        ([{"role": "robot", "content": "hi"}], "role"),
        ([{"role": "user"}], "content must be"),
        ([{"role": "system", "content": "only a system turn"}], "no user turn"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "'text', 'image' or 'video'"),
        ([{"role": "user", "content": [{"type": "image", "image": 3}]}], "index into 'images'"),
        ([{"role": "user", "content": [{"type": "video", "video": 0}]}], r"index into 'videos' \(0..-1\)"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "last turn"),
        ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "must be a string"),
    ],
)
def test_malformed_messages_are_rejected_with_the_reason(messages, fragment):
    raw = messages if isinstance(messages, str) else json.dumps(messages)
    with pytest.raises(InvalidRequest, match=fragment):
        parse({"messages": np.array([raw.encode()], dtype=np.object_)})


def test_missing_messages_are_rejected():
    with pytest.raises(InvalidRequest, match="'messages' is required"):
        parse({})


def test_an_image_no_message_refers_to_is_rejected():
    with pytest.raises(InvalidRequest, match="no message part refers"):
        parse(tensors(user("hi"), [png()]))


def test_video_parts_name_the_videos_sent_and_only_users_send_them():
    parts = [{"type": "video", "video": 1}, {"type": "image", "image": 0}, {"type": "video", "video": 0}]
    req = parse(tensors([{"role": "user", "content": parts}], [png()], [b"video-0", b"video-1"]))
    assert req.videos == (b"video-0", b"video-1")
    assert [p["type"] for p in req.messages[0].content] == ["video", "image", "video"]
    with pytest.raises(InvalidRequest, match=r"videos \[1\] are sent but no message part refers to them"):
        parse(tensors([{"role": "user", "content": [{"type": "video", "video": 0}]}], videos=[b"a", b"b"]))
    with pytest.raises(InvalidRequest, match="only user turns may carry images and videos"):
        parse(tensors([{"role": "system", "content": [{"type": "video", "video": 0}]}, *user("hi")], videos=[b"a"]))
    with pytest.raises(LimitExceeded, match="2 videos, at most 1 per request"):
        GenerationRequest.from_tensors(tensors([{"role": "user", "content": [
            {"type": "video", "video": 0}, {"type": "video", "video": 1}]}], videos=[b"a", b"b"]), Limits())


def test_too_many_images_are_rejected():
    with pytest.raises(LimitExceeded, match="at most 2"):
        parse(tensors(user("hi", 3), [png(), png(), png()]))


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("max_tokens", 0, "max_tokens must be between 1 and 64"),
        ("max_tokens", 65, "max_tokens must be between 1 and 64"),
        ("temperature", -0.1, "temperature must be in"),
        ("temperature", 2.5, "temperature must be in"),
        ("temperature", float("nan"), "finite"),
        ("top_p", 0.0, "top_p must be in"),
        ("top_p", 1.5, "top_p must be in"),
    ],
)
def test_parameters_out_of_range_are_rejected(name, value, fragment):
    with pytest.raises(InvalidRequest, match=fragment):
        parse(tensors(user("hi"), **{name: value}))


def test_empty_stop_strings_are_rejected():
    with pytest.raises(InvalidRequest, match="must not be empty"):
        parse(tensors(user("hi"), stop=[""]))


def test_a_chunk_becomes_the_output_tensors_of_the_contract():
    out = GenerationChunk(text="héllo", prompt_tokens=12, completion_tokens=3, finish_reason="stop").to_tensors()
    assert out["text_output"][0].decode() == "héllo"
    assert out["finish_reason"][0] == b"stop"
    assert out["prompt_tokens"].dtype == np.int32 and out["completion_tokens"][0] == 3
    assert out["visual_tokens"][0] == 0


def test_text_that_cannot_fit_the_prompt_limit_is_refused_before_any_tokenizer_runs():
    """max_prompt_tokens x 128 characters (wire_contract/text_budget.py), every turn's text counted."""
    limits = Limits(max_prompt_tokens=4)
    assert parse_with(limits, [{"role": "system", "content": "x" * 12}] + user("y" * 500)).messages
    with pytest.raises(LimitExceeded) as refused:
        parse_with(limits, [{"role": "system", "content": "x" * 13}] + user("y" * 500))
    assert str(refused.value) == ("invalid request: the messages hold 513 characters of text; a prompt of at most "
                                  "4 tokens holds at most 512 (128 characters per token at most)")


def parse_with(limits, messages):
    return GenerationRequest.from_tensors(tensors(messages), limits)
