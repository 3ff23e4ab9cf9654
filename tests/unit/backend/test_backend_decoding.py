"""Streamed text is final when released: whole characters only, and never the start of a stop string."""

import pytest
from transformers import AutoTokenizer

from backend_python.checkpoint import tokenizer_files
from backend_python.decoding import TextStream

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tokenizer_files())


def stream_all(tokenizer, text, stop=()):
    stream = TextStream(tokenizer, stop)
    deltas = [stream.add(t) for t in tokenizer.encode(text)]
    deltas.append(stream.flush())
    return deltas, stream


def test_deltas_join_to_the_text_across_multibyte_characters(tokenizer):
    text = "Zürich 東京 🐱 naïve café"
    deltas, _ = stream_all(tokenizer, text)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_output_stops_before_a_stop_string_and_never_leaks_its_start(tokenizer):
    deltas, stream = stream_all(tokenizer, "one two three STOP four five", stop=["STOP"])
    assert "".join(deltas) == "one two three "
    assert stream.stopped


def test_special_tokens_are_not_shown(tokenizer):
    stream = TextStream(tokenizer)
    ids = tokenizer.encode("hello") + [151645]
    assert "".join(stream.add(t) for t in ids) + stream.flush() == "hello"
