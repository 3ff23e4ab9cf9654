"""Oversized text through the real Triton: refused before any tokenizer runs, and never in anyone's way.

Before, four 18 MB texts were each tokenized in full by the model's prompt workers before being refused
(400 after 33-98 s), and a two-word request sent meanwhile waited 97.7 s. The model now refuses text
that cannot fit max_prompt_tokens by its length alone (wire_contract/text_budget.py). The small
request's time beside the oversized ones is compared with its time alone, in the same run; what is
left between the two is Triton receiving 72 MB and the model reading the JSON (about 0.1 s per 18 MB
text here), not a tokenization.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from clients.triton_stream import build_inputs, stream, user_turn

pytestmark = pytest.mark.integration

OVERSIZED = 4
TEXT_BYTES = 18 * 1024 * 1024  # under the frontend's 20 MiB body cap, as in the report


def small(url: str):
    return stream(url, build_inputs(user_turn("Hello there."), max_tokens=4, ignore_eos=True), timeout=120)


def seconds(result) -> float:
    return result.finished_at - result.started


def test_oversized_texts_are_refused_at_once_and_a_small_request_beside_them_is_as_fast_as_alone(triton):
    url = triton.grpc_url
    small(url)  # warm
    alone = statistics.median(seconds(small(url)) for _ in range(3))
    # Built before the clock starts: serializing 18 MB is the client's cost, not the server's.
    oversized = [build_inputs(user_turn("word " * (TEXT_BYTES // 5)), max_tokens=4) for _ in range(OVERSIZED)]
    with ThreadPoolExecutor(OVERSIZED + 1) as pool:
        refused = [pool.submit(stream, url, inputs, timeout=120) for inputs in oversized]
        time.sleep(0.2)  # on their way first
        beside = pool.submit(small, url).result()
        refused = [f.result() for f in refused]
    print(f"\nsmall request alone {alone:.3f} s, beside {OVERSIZED} x {TEXT_BYTES / 2**20:.0f} MiB of text "
          f"{seconds(beside):.3f} s; refused in {', '.join(f'{seconds(r):.2f}' for r in refused)} s")
    for result in refused:
        # An error on the stream carries only its message: "invalid request: ..." is INVALID_ARG's (contracts.md).
        assert result.error is not None and str(result.error).startswith("invalid request: "), result.error
        assert "characters of text" in str(result.error) and "2,048 tokens" in str(result.error)
        assert seconds(result) < 5, "refused by its length, not after a tokenization"
    assert beside.error is None and beside.completion_tokens == 4
    assert seconds(beside) < alone + 2.0, (alone, seconds(beside))
    assert small(url).error is None, "still serving"
