"""Turning generated token ids into streamed text, and stopping at stop strings.

Text is only released once it is final: a token that ends inside a multi-byte
character waits for the next one (the ``tokenizers`` library's ``DecodeStream``,
one call per token in Rust), and the tail that could still become a stop string
is held back until it cannot.
"""

from __future__ import annotations

from typing import Any, Sequence

from tokenizers.decoders import DecodeStream


class TextStream:
    """Incremental detokenization of one sequence, with stop strings."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()):
        """``tokenizer``: a fast Hugging Face tokenizer (its ``backend_tokenizer`` decodes)."""
        self._tokenizer = tokenizer.backend_tokenizer
        self._decoder = DecodeStream(skip_special_tokens=True)
        self._stop = tuple(stop)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._text = ""  # decoded text, final characters only
        self._sent = 0  # characters of _text already released
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Add one token; return the text that may be released now."""
        if self.stopped:
            return ""
        piece = self._decoder.step(self._tokenizer, token_id)
        if not piece:
            return ""  # an incomplete UTF-8 sequence (or a special token): wait for more
        self._text += piece
        for stop in self._stop:
            at = self._text.find(stop, max(0, self._sent - len(stop)))
            if at != -1:
                self._text = self._text[:at]
                self.stopped = True
        end = len(self._text) if self.stopped else max(self._sent, len(self._text) - self._hold)
        return self._release(end)

    def flush(self) -> str:
        """Release everything left at the end of the sequence."""
        return self._release(len(self._text))

    @property
    def text(self) -> str:
        return self._text

    def _release(self, end: int) -> str:
        delta = self._text[self._sent : end]
        self._sent = max(self._sent, end)
        return delta
