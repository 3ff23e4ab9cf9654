"""Oversized text at the frontend's door: a 400 before anything is sent to Triton, and nobody waits for it.

Four 18 MB texts (under the default 20 MiB body cap) at once, beside a small request: each is refused
by its length (FRONTEND_MAX_PROMPT_TOKENS x 128 characters, wire_contract/text_budget.py), and the small
request's time beside them is compared with its time alone, in the same run. What is left between the
two is the frontend receiving and parsing 72 MB of JSON, not a tokenization (before: 97.7 s).
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from frontend_harness import MODEL, start_frontend

pytestmark = pytest.mark.integration

OVERSIZED = 4
TEXT_BYTES = 18 * 1024 * 1024


@pytest.fixture(scope="module")
def default_cap_frontend(triton, tmp_path_factory):
    """The default body cap (20 MiB) and prompt limit (2,048 tokens: the CPU config's)."""
    server = start_frontend(triton, tmp_path_factory, "oversized", FRONTEND_MAX_BODY_BYTES=str(20 * 1024 * 1024),
                            FRONTEND_MAX_PROMPT_TOKENS="2048")
    yield server
    server.stop()


def _timed_post(url: str, content: bytes) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(f"{url}/v1/chat/completions", content=content,
                          headers={"content-type": "application/json"}, timeout=120)
    return response, time.monotonic() - started


def test_oversized_texts_get_a_400_at_once_and_a_small_request_beside_them_is_as_fast_as_alone(default_cap_frontend):
    url = default_cap_frontend.url
    small = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hello there."}],
                        "max_tokens": 4}).encode()
    _timed_post(url, small)  # warm
    alone = statistics.median(_timed_post(url, small)[1] for _ in range(3))
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "word " * (TEXT_BYTES // 5)}]}).encode()
    assert len(body) < 20 * 1024 * 1024
    with ThreadPoolExecutor(OVERSIZED + 1) as pool:
        refused = [pool.submit(_timed_post, url, body) for _ in range(OVERSIZED)]
        time.sleep(0.2)  # on their way first
        beside, beside_s = pool.submit(_timed_post, url, small).result()
        refused = [f.result() for f in refused]
    print(f"\nsmall request alone {alone:.3f} s, beside {OVERSIZED} x {TEXT_BYTES / 2**20:.0f} MiB of text "
          f"{beside_s:.3f} s; refused in {', '.join(f'{s:.2f}' for _, s in refused)} s")
    for response, took in refused:
        assert response.status_code == 400, response.text[:300]
        error = response.json()["error"]
        assert error["param"] == "messages" and "characters of text" in error["message"], error
        assert took < 5
    assert beside.status_code == 200, beside.text
    assert beside_s < alone + 2.0, (alone, beside_s)
