"""The real Triton server, started on model_repository/, called over gRPC with tritonclient."""

from __future__ import annotations

import json
import queue
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import tritonclient.grpc as grpcclient
from backend_samples import bomb, png, truncated_jpeg
from triton_metrics import scrape, scrape_until

from clients.triton_stream import build_inputs, stream, user_turn
from wire_contract import DELTA_OUTPUTS, OUTPUTS

pytestmark = pytest.mark.integration


def ask(triton, prompt="Describe the picture.", images=(), **kwargs):
    messages = kwargs.pop("messages", None) or user_turn(prompt, len(images))
    return stream(triton.grpc_url, build_inputs(messages, list(images), **kwargs))


def test_a_streamed_answer_with_an_image(triton):
    result = ask(triton, images=[png(120, 80)], max_tokens=16, ignore_eos=True)
    assert result.error is None
    assert len(result.deltas) > 1 and result.text == "".join(result.deltas)
    assert result.finish_reason == "length"
    assert result.completion_tokens == 16
    assert result.prompt_tokens > 64  # the image alone is at least 64 tokens


def test_a_streams_first_and_last_responses_carry_every_output_and_those_between_the_deltas_only(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    got: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        client.async_stream_infer("qwen3_vl", build_inputs(user_turn("Describe it.", 1), [png(120, 80)], max_tokens=24,
                                                           ignore_eos=True), enable_empty_final_response=True)
        outputs = []
        while True:
            result, error = got.get(timeout=120)
            assert error is None
            outputs.append({output.name for output in result.get_response().outputs})
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    assert len(outputs) > 2 and outputs[0] == outputs[-1] == set(OUTPUTS)
    assert all(names == set(DELTA_OUTPUTS) for names in outputs[1:-1])


def test_a_whole_answer_comes_in_one_response(triton):
    streamed = ask(triton, "Say hello.", max_tokens=12)
    whole = ask(triton, "Say hello.", max_tokens=12, stream=False)
    assert whole.error is None and len(whole.deltas) == 1
    assert whole.text == streamed.text and whole.finish_reason == streamed.finish_reason


def test_the_http_generate_endpoint_returns_the_whole_answer(triton):
    body = json.dumps({"messages": json.dumps(user_turn("Say hello.")), "max_tokens": 12, "stream": False}).encode()
    request = urllib.request.Request(f"{triton.http_url}/v2/models/qwen3_vl/generate", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    assert answer["text_output"] == ask(triton, "Say hello.", max_tokens=12).text
    assert answer["completion_tokens"] >= 1 and answer["finish_reason"] in ("stop", "length")


def test_a_multi_turn_conversation_with_a_system_prompt(triton):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "image", "image": 0}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A red square."},
        {"role": "user", "content": [{"type": "image", "image": 1}, {"type": "text", "text": "And this?"}]},
    ]
    result = ask(triton, messages=messages, images=[png(), png(colour=(0, 0, 200))], max_tokens=8)
    assert result.error is None and result.completion_tokens >= 1


def test_concurrent_requests_run_in_shared_batches(triton):
    time.sleep(0.3)  # the model applies its metric updates every 100 ms: the earlier tests' land first
    before = scrape(triton.metrics_url)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: ask(triton, f"Question {i}?", max_tokens=24, ignore_eos=True), range(16)))
    assert all(r.error is None and r.completion_tokens == 24 for r in results)
    generated = lambda m: m["qwen3vl_generated_tokens_total"] - before.get("qwen3vl_generated_tokens_total", 0)  # noqa: E731
    after = scrape_until(triton.metrics_url, lambda m: generated(m) >= 16 * 24)
    steps = after["qwen3vl_batch_size_count"] - before.get("qwen3vl_batch_size_count", 0)
    sequences = after["qwen3vl_batch_size_sum"] - before.get("qwen3vl_batch_size_sum", 0)
    assert sequences / steps > 2, "decode steps should carry several sequences"
    intervals = after["qwen3vl_inter_token_seconds_count"] - before.get("qwen3vl_inter_token_seconds_count", 0)
    waited = after["qwen3vl_inter_token_seconds_sum"] - before.get("qwen3vl_inter_token_seconds_sum", 0)
    assert 0 < intervals < steps, "one inter-token interval per decode step after the first of the burst"
    assert waited > 0
    prefilled = after["qwen3vl_prefill_size_sum"] - before.get("qwen3vl_prefill_size_sum", 0)
    assert prefilled == 16, "each request is prefilled once, and counted in the prefill-size histogram"
    executions = after["nv_inference_exec_count_total"] - before["nv_inference_exec_count_total"]
    assert executions < 16, "Triton's dynamic batcher should hand over several requests per execute"
    assert generated(after) >= 16 * 24


def test_a_new_request_is_not_stuck_behind_a_long_one(triton):
    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(ask, triton, "Write a long essay.", max_tokens=800, ignore_eos=True)
        time.sleep(0.5)
        short = ask(triton, "Short?", max_tokens=4, ignore_eos=True)
        long = long.result()
    assert short.error is None and long.error is None
    assert short.finished_at < long.finished_at, "the short request finished while the long one was generating"
    assert short.ttft < (long.finished_at - long.started) / 4


BAD_INPUTS = [
    (dict(messages=[{"role": "user", "content": [{"type": "image", "image": 0}]}], images=[b"not an image"]),
     "not an image"),
    (dict(images=[truncated_jpeg()]), "truncated or corrupt"),
    (dict(images=[png(5000, 4000)]), "pixels, at most"),
    (dict(images=[png()] * 5), "at most 4 per request"),
    (dict(images=[bomb()]), "decompression bomb"),
    (dict(max_tokens=0), "max_tokens must be between"),
    (dict(max_tokens=100000), "max_tokens must be between"),
    (dict(temperature=9.0), "temperature must be in"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(messages=[{"role": "assistant", "content": "no user"}]), "no user turn"),
    (dict(messages=[{"role": "user", "content": "word " * 3000}]), "at most 2048"),
]


@pytest.mark.parametrize("bad, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_gets_a_clear_error_and_the_next_request_succeeds(triton, bad, message):
    bad = dict(bad)
    images = bad.pop("images", [])
    messages = bad.pop("messages", None) or user_turn("Look.", len(images))
    failed = stream(triton.grpc_url, build_inputs(messages, images, **bad))
    assert failed.error is not None and message in str(failed.error)
    assert "INVALID_ARG" in str(failed.error) or "invalid" in str(failed.error)
    assert ask(triton, "Still there?", max_tokens=4).error is None


def test_malformed_messages_json_is_rejected(triton):
    inputs = build_inputs([], max_tokens=4)
    inputs[0].set_data_from_numpy(__import__("numpy").array([[b"{not json"]], dtype=object))
    failed = stream(triton.grpc_url, inputs)
    assert "not valid JSON" in str(failed.error)


def test_a_bad_request_in_a_batch_does_not_fail_its_neighbours(triton):
    def one(i):
        if i % 4 == 0:
            return ask(triton, images=[b"garbage"], max_tokens=8)
        return ask(triton, f"Fine {i}.", max_tokens=8, ignore_eos=True)

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    for i, r in enumerate(results):
        if i % 4 == 0:
            assert "not an image" in str(r.error)
        else:
            assert r.error is None and r.completion_tokens == 8


def test_a_cancelled_stream_stops_its_generation(triton):
    before = scrape(triton.metrics_url)
    result = stream(triton.grpc_url, build_inputs(user_turn("Go on and on."), max_tokens=2000, ignore_eos=True),
                    cancel_after=3)
    assert result.finish_reason == "cancelled"
    key = "qwen3vl_requests_finished_total[('reason', 'cancelled')]"
    cancelled = lambda m: m.get(key, 0) - before.get(key, 0)  # noqa: E731
    after = scrape_until(triton.metrics_url,
                         lambda m: cancelled(m) >= 1 and m["qwen3vl_sequences_in_flight"] == 0)
    assert cancelled(after) == 1
    assert after["qwen3vl_sequences_in_flight"] == 0, "the cancelled sequence must give its slot back"
    generated = after["qwen3vl_generated_tokens_total"] - before.get("qwen3vl_generated_tokens_total", 0)
    assert generated < 1000, "generation must stop long before max_tokens"
