"""From sampled token ids to what the client sees: text deltas, stop strings, finish reasons, usage.

Runs on the engine thread for every step's tokens once they reach the host, one step
behind the device. A sequence that ended on EOS or a stop string has had one token too
many launched by then; it is dropped here.
"""

from __future__ import annotations

import logging
import time

from .decoding import TextStream
from .errors import Cancelled, ServingError
from .metrics import EngineMetrics
from wire_contract import FINISH_CANCELLED, FINISH_LENGTH, FINISH_STOP

from .request import GenerationChunk, GenerationRequest
from .sequence import Sequence

log = logging.getLogger(__name__)


class OutputProcessor:
    def __init__(self, tokenizer, eos_ids: list[int], stream_interval_ms: float, metrics: EngineMetrics):
        self._tokenizer = tokenizer
        self._eos = frozenset(eos_ids)
        self._interval = stream_interval_ms / 1000.0
        self._metrics = metrics

    def text_stream(self, request: GenerationRequest) -> TextStream:
        return TextStream(self._tokenizer, request.sampling.stop)

    def process(self, batch: list[Sequence], tokens: list[int]) -> list[Sequence]:
        """Take one new token per sequence and stream it; return the sequences that end here (finished
        or cancelled): the engine frees them, then calls ``finish``."""
        now = time.monotonic()
        ended = []
        live = [(s, t) for s, t in zip(batch, tokens) if not s.finished and not s.finish_reason]
        self._metrics.generated_tokens(len(live))
        for s, token in live:
            s.tokens.append(token)
            s.generated += 1
            if s.first_token_at is None:
                s.first_token_at = now
                self._metrics.time_to_first_token(now - s.arrival)
            sampling = s.request.sampling
            if token in self._eos and not sampling.ignore_eos:
                s.finish_reason = FINISH_STOP
            else:
                s.pending += s.text.add(token)
                if s.text.stopped:
                    s.finish_reason = FINISH_STOP
                elif s.generated >= sampling.max_tokens:
                    s.finish_reason = FINISH_LENGTH
            if self.cancelled(s) or s.finish_reason:
                ended.append(s)
            # While the previous delta is still on its way, text accumulates: a slow connection
            # (or a response path saturated by many streams) gets fewer, larger deltas, never a backlog.
            elif s.request.stream and s.pending and now - s.last_sent >= self._interval and not s.sink.busy():
                s.sink.send(self._chunk(s, s.pending), final=False)
                s.pending, s.last_sent = "", now
        return ended

    def cancelled(self, s: Sequence) -> bool:
        if not s.finish_reason and s.sink.is_cancelled():
            s.finish_reason = FINISH_CANCELLED
        return s.finish_reason == FINISH_CANCELLED

    def finish(self, s: Sequence, error: ServingError | None = None) -> None:
        """Send a sequence's last response (or its error); the engine has freed it already."""
        if s.finished:
            return
        s.finished = True
        if s.finish_reason == FINISH_CANCELLED and error is None:
            error = Cancelled("the request was cancelled")
        try:
            if error is None:
                s.pending += s.text.flush()
                text = s.pending if s.request.stream else s.text.text
                s.sink.send(self._chunk(s, text, final=True), final=True)
            elif not isinstance(error, Cancelled):
                s.sink.fail(error)
            else:
                s.sink.send(self._chunk(s, ""), final=True)
        except Exception:  # a broken client connection must not stop the engine
            log.exception("sending the last response failed")

    @staticmethod
    def reason(s: Sequence, error: ServingError | None) -> str:
        """The finish reason the metrics count."""
        return "error" if error is not None and not isinstance(error, Cancelled) else s.finish_reason

    def _chunk(self, s: Sequence, text: str, final: bool = False) -> GenerationChunk:
        """The last response also carries the answer's token ids (for checks in process; not sent on the wire)."""
        return GenerationChunk(text=text, prompt_tokens=s.prompt.length, completion_tokens=s.generated,
                               finish_reason=s.finish_reason, visual_tokens=s.prompt.visual_tokens,
                               token_ids=s.tokens[s.prompt.length:s.prompt.length + s.generated] if final else [])
