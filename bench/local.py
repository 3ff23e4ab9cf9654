"""`make bench`: the local stack (Triton + frontend on the tiny checkpoint) under 1 and 16 streaming clients.

Prints, for each path (straight to Triton over gRPC, and through the frontend's
/v1/chat/completions with server-sent events): requests/s, generated tokens/s,
time to first token p50/p95, and the 16-vs-1 ratio and the frontend's overhead,
all measured in the same run.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image

from bench.stats import RunSummary, table
from clients.triton_stream import build_inputs, stream, user_turn
from stack.frontend import FrontendServer
from stack.ports import free_port
from stack.triton import TritonServer


def image_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 40 + seed % 20).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def via_triton(url: str, i: int, max_tokens: int, image: bytes):
    r = stream(url, build_inputs(user_turn(f"Describe picture {i} in detail.", 1), [image],
                                 max_tokens=max_tokens))
    gaps = [b - a for a, b in zip(r.token_times, r.token_times[1:])]
    return r.error is None, r.completion_tokens, r.ttft, gaps, r.finished_at - r.started


def via_frontend(base: str, i: int, max_tokens: int, image: bytes):
    body = {
        "model": "qwen3-vl", "stream": True, "max_tokens": max_tokens,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(image).decode()}},
            {"type": "text", "text": f"Describe picture {i} in detail."}]}],
    }
    started = time.monotonic()
    first, times, tokens, ok = None, [], 0, False
    with httpx.Client(timeout=300) as client, client.stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                ok = resp.status_code == 200
                break
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                now = time.monotonic()
                first = first or now
                times.append(now)
    gaps = [b - a for a, b in zip(times, times[1:])]
    return ok, tokens, (first - started) if first else None, gaps, time.monotonic() - started


def run(label: str, call, clients: int, requests: int, max_tokens: int, images: list[bytes]) -> RunSummary:
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: call(i, max_tokens, images[i % len(images)]), range(requests)))
    seconds = time.monotonic() - started
    good = [r for r in results if r[0]]
    return RunSummary(
        label=label, clients=clients, requests=len(good), errors=len(results) - len(good), seconds=seconds,
        tokens=sum(r[1] for r in good), ttft=[r[2] for r in good if r[2] is not None],
        itl=[g for r in good for g in r[3]], latency=[r[4] for r in good],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()

    triton = TritonServer(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          log_file="var/log/bench-triton.log").start()
    frontend = FrontendServer(port=free_port(), env={"FRONTEND_TRITON_GRPC_URL": triton.grpc_url},
                              log_file="var/log/bench-frontend.log").start()
    images = [image_bytes(i) for i in range(8)]
    try:
        paths = {
            "triton gRPC": lambda i, n, img: via_triton(triton.grpc_url, i, n, img),
            "frontend SSE": lambda i, n, img: via_frontend(frontend.url, i, n, img),
        }
        for call in paths.values():  # warm-up
            run("warm-up", call, 2, 2, 8, images)
        results: dict[tuple[str, int], RunSummary] = {}
        for clients in args.clients:
            for label, call in paths.items():
                results[label, clients] = run(label, call, clients, clients * args.requests_per_client,
                                              args.max_tokens, images)
    finally:
        frontend.stop()
        triton.stop()

    print(f"\nmachine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores; "
          f"tiny Qwen3-VL checkpoint on CPU; one 256x256 image + text per request, {args.max_tokens} tokens each\n")
    print(table([s.row() for s in results.values()]))
    low, high = min(args.clients), max(args.clients)
    print()
    rows = []
    for label in paths:
        a, b = results[label, low], results[label, high]
        rows.append({"path": label, f"tok/s {high} vs {low}": f"{b.tokens_per_s / a.tokens_per_s:.2f}x",
                     f"req/s {high} vs {low}": f"{b.requests_per_s / a.requests_per_s:.2f}x"})
    print(table(rows))
    print()
    overhead = []
    for clients in args.clients:
        t, f = results["triton gRPC", clients], results["frontend SSE", clients]
        p50 = lambda s, attr: sorted(getattr(s, attr))[len(getattr(s, attr)) // 2]  # noqa: E731
        overhead.append({"clients": str(clients),
                         "TTFT frontend/triton": f"{p50(f, 'ttft') / p50(t, 'ttft'):.2f}x",
                         "total frontend/triton": f"{p50(f, 'latency') / p50(t, 'latency'):.2f}x",
                         "TTFT added ms (p50)": f"{(p50(f, 'ttft') - p50(t, 'ttft')) * 1000:.0f}"})
    print(table(overhead))


if __name__ == "__main__":
    main()
