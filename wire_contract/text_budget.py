"""How much text can still fit in a prompt limit: a bound both doors check before any tokenizer runs.

Tokenizing is the expensive part of refusing an oversized text (18 MB took a prompt worker 33-98 s
while smaller requests waited behind it), and counting characters is not. The bound is sound, so it
never refuses a text that would fit:

- The tokenizer normalizes to NFC first. A normalized character stands for at most 4 characters as
  sent (its canonical decomposition has at most 4 code points; an ASCII one stands for exactly 1), and
  a non-ASCII character takes at least 2 bytes of UTF-8. So if each byte of a token counts 1 when
  ASCII and 2 otherwise, a token covers at most that many characters as sent.
- No token of Qwen3's vocabulary (the 151,643 byte-level BPE tokens and the 26 added ones, the same
  in Qwen3-VL) weighs more than 128 that way: the longest is a run of 128 spaces.

Hence ``max_prompt_tokens`` tokens hold at most ``max_prompt_tokens * 128`` characters of text, the
chat template's own tokens only adding to the count; tests/unit/contract/test_text_budget.py checks
both facts against the real tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

TEXT_CHARS_PER_TOKEN = 128


def text_budget(max_prompt_tokens: int) -> int:
    """Characters of text (every turn's, summed) beyond which a prompt cannot fit ``max_prompt_tokens``."""
    return max_prompt_tokens * TEXT_CHARS_PER_TOKEN


def over_budget(texts: Iterable[str], max_prompt_tokens: int) -> str | None:
    """The reason to refuse, or None. ``len`` of a str costs the same for any length."""
    total = sum(len(text) for text in texts)
    budget = text_budget(max_prompt_tokens)
    if total <= budget:
        return None
    return (f"the messages hold {total:,} characters of text; a prompt of at most {max_prompt_tokens:,} tokens "
            f"holds at most {budget:,} ({TEXT_CHARS_PER_TOKEN} characters per token at most)")
