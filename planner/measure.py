"""Measure a pod profile against a running Triton with the gRPC stream API, and drive
open-loop load at a fixed arrival rate (the check that the pod model agrees with reality).

    python -m planner.measure --url 127.0.0.1:8001 --metrics-url http://127.0.0.1:8002/metrics \
        --name cpu-tiny --out planner/profiles/cpu-tiny.json
    python -m planner.measure --start --name cpu-tiny --out planner/profiles/cpu-tiny.json

`ignore_eos` + `max_tokens` fix every generation's length, so the decode step time can be
read off the stream of tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import statistics
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from planner.profile import FORMAT, PodProfile, profile_from_json

MODEL = "qwen3_vl"
TTFT_SUM = "qwen3vl_time_to_first_token_seconds_sum"
REQUEST_ID = re.compile(r"\[request id: ([^\]]+)\]")
WORD = "benchmark "


@dataclass
class Stream:
    """One request's responses as the client saw them."""

    sent: float
    token_times: list[float] = field(default_factory=list)
    tokens: int = 0
    prompt_tokens: int = 0
    finished: float | None = None
    error: str | None = None


class Client:
    """A gRPC stream to Triton; callbacks record when each response arrives."""

    def __init__(self, url: str, model: str = MODEL):
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.model = model
        self.client = grpcclient.InferenceServerClient(url=url)
        self.streams: dict[str, Stream] = {}
        self.orphan_errors: list[str] = []
        self.done: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self._next = 0
        self.client.start_stream(callback=partial(self._on_response))

    def close(self) -> None:
        """Cancel only if a request is unfinished: cancelling the stream just after a final response
        makes Triton 2.51 keep that request, and the model with it, for ever (README, Containers)."""
        with self._lock:
            unfinished = any(s.finished is None for s in self.streams.values())
        self.client.stop_stream(cancel_requests=unfinished)
        self.client.close()

    def config(self) -> dict:
        return self.client.get_model_config(self.model, as_json=True)["config"]

    def _on_response(self, result, error) -> None:
        now = time.perf_counter()
        if error is not None:
            match = REQUEST_ID.search(str(error))
            with self._lock:
                s = self.streams.get(match.group(1)) if match else None
                if s is None:
                    self.orphan_errors.append(str(error))
                elif s.finished is None:
                    s.error, s.finished = str(error), now
                    self.done.put(match.group(1))
            return
        response = result.get_response()
        rid = response.id
        final = response.parameters.get("triton_final_response")
        is_final = bool(final and final.bool_param)
        completion = result.as_numpy("completion_tokens")
        prompt = result.as_numpy("prompt_tokens")
        with self._lock:
            s = self.streams[rid]
            if completion is not None and int(completion.reshape(-1)[0]) > s.tokens:
                s.tokens = int(completion.reshape(-1)[0])
                s.token_times.append(now)
            if prompt is not None:
                s.prompt_tokens = int(prompt.reshape(-1)[0])
            if is_final:
                s.finished = now
                self.done.put(rid)

    def send(self, text: str, max_tokens: int) -> str:
        g = self._grpc
        messages = json.dumps([{"role": "user", "content": text}]).encode()
        tensors = [
            ("messages", np.array([[messages]], dtype=np.object_), "BYTES"),
            ("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
            ("ignore_eos", np.array([[True]], dtype=bool), "BOOL"),
            ("stream", np.array([[True]], dtype=bool), "BOOL"),
        ]
        inputs = []
        for name, value, dtype in tensors:
            tensor = g.InferInput(name, list(value.shape), dtype)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        with self._lock:
            rid = f"req-{self._next}"
            self._next += 1
            self.streams[rid] = Stream(sent=time.perf_counter())
        self.client.async_stream_infer(self.model, inputs, request_id=rid, enable_empty_final_response=True)
        return rid

    def wait(self, rids: list[str], timeout: float = 300.0) -> list[Stream]:
        pending = set(rids)
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(pending)} requests unfinished after {timeout} s")
            try:
                pending.discard(self.done.get(timeout=left))
            except queue.Empty:
                continue
        return [self.streams[r] for r in rids]


def prompt_text(words: int) -> str:
    return (WORD * words).strip()


def read_metrics(url: str) -> dict[str, float]:
    """Triton's counters for the model, summed over labels."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or f'model="{MODEL}"' not in line and not line.startswith("qwen3vl_"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        except ValueError:
            continue
    return out


def _engine(config: dict):
    """The engine settings the served model config gives (with the engine's defaults)."""
    from backend_python.config import EngineConfig

    return EngineConfig.from_parameters(config.get("parameters") or {}, environ={"MODEL_PATH": "unused"})


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its descendants (tritonserver and its backend stubs)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(times.get(p, 0.0) for p in tree)


def measure_prefill(client: Client, metrics_url: str, sizes=(8, 64, 256), repeat: int = 3):
    """Lone requests with max_tokens=1. The model's own TTFT histogram (request reaches the model ->
    first token) gives the engine's prefill, fitted as a line in the prompt tokens; what the
    client waits on top of it (gRPC, Triton's batcher, the response path) is the per-request
    overhead, which does not hold up the engine."""
    points, overheads = [], []
    for words in sizes:
        for _ in range(repeat):
            before = read_metrics(metrics_url)
            (s,) = client.wait([client.send(prompt_text(words), 1)])
            if s.error or not s.token_times:
                raise RuntimeError(f"prefill request failed: {s.error}")
            after = read_metrics(metrics_url)
            model = after.get(TTFT_SUM, 0.0) - before.get(TTFT_SUM, 0.0)
            client_ttft = s.token_times[0] - s.sent
            if not model:
                model = client_ttft
            points.append((s.prompt_tokens, model))
            overheads.append(max(client_ttft - model, 0.0))
    x = np.array([p for p, _ in points], dtype=float)
    y = np.array([t for _, t in points])
    per_token, base = np.polyfit(x, y, 1) if len(set(x)) > 1 else (0.0, float(np.median(y)))
    if per_token < 0:
        per_token, base = 0.0, float(np.median(y))
    return max(float(base), 0.0), float(per_token), float(np.median(overheads)), points


def measure_decode(client: Client, batch: int, max_tokens: int, words: int = 8) -> float:
    """Decode step time while `batch` sequences run together: each stream's span from its first
    to its last token over its token count (responses can reach the client in bunches, so single
    gaps are not trusted), the median over the streams."""
    streams = client.wait([client.send(prompt_text(words), max_tokens) for _ in range(batch)])
    spans = []
    for s in streams:
        if s.error:
            raise RuntimeError(f"decode request failed: {s.error}")
        if len(s.token_times) > 1 and s.tokens > 1:
            spans.append((s.token_times[-1] - s.token_times[0]) / (s.tokens - 1))
    if not spans:
        raise RuntimeError("no stream delivered more than one token: is ignore_eos honoured?")
    return float(statistics.median(spans))


@dataclass
class LoadResult:
    rps: float
    seconds: float
    sent: int
    completed: int
    errors: int
    throughput: float
    mean_queue_seconds: float
    ttft: list[float]
    per_token: list[float]


def run_load(client: Client, metrics_url: str, rps: float, seconds: float, words: int, max_tokens: int,
             seed: int = 0) -> LoadResult:
    """Open-loop Poisson arrivals for `seconds`, then wait for the stragglers. Queue time is
    Triton's own (nv_inference_queue_duration_us / nv_inference_request_success)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rps, int(rps * seconds * 2) + 10))
    arrivals = arrivals[arrivals < seconds]
    before = read_metrics(metrics_url)
    start = time.perf_counter()
    rids = []
    text = prompt_text(words)
    for t in arrivals:
        delay = start + t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        rids.append(client.send(text, max_tokens))
    streams = client.wait(rids, timeout=seconds + 300)
    after = read_metrics(metrics_url)
    ok = [s for s in streams if s.error is None]
    window_end = start + seconds
    completed_in_window = sum(1 for s in ok if s.finished <= window_end)
    served = after.get("nv_inference_request_success", 0) - before.get("nv_inference_request_success", 0)
    queue_us = after.get("nv_inference_queue_duration_us", 0) - before.get("nv_inference_queue_duration_us", 0)
    return LoadResult(
        rps=rps,
        seconds=seconds,
        sent=len(streams),
        completed=len(ok),
        errors=len(streams) - len(ok),
        throughput=completed_in_window / seconds,
        mean_queue_seconds=queue_us / served / 1e6 if served else 0.0,
        ttft=[s.token_times[0] - s.sent for s in ok if s.token_times],
        per_token=[(s.token_times[-1] - s.token_times[0]) / (s.tokens - 1) for s in ok if s.tokens > 1],
    )


def measure_profile(client: Client, metrics_url: str, name: str, *, pid: int | None = None,
                    startup_seconds: float | None = None, image_pull_seconds: float = 0.0,
                    decode_tokens: int = 48) -> PodProfile:
    config = client.config()
    engine = _engine(config)
    slots = engine.max_num_seqs
    batching = config.get("dynamic_batching") or {}
    policy = batching.get("default_queue_policy") or {}
    client.wait([client.send(prompt_text(8), 4)])  # warm-up
    base, per_token, overhead, prefill_points = measure_prefill(client, metrics_url)
    batches = sorted({b for b in (1, 2, 4, slots) if b <= slots})
    cpu_before, wall_before = (cpu_seconds(pid) if pid else 0.0), time.monotonic()
    steps = [(b, measure_decode(client, b, decode_tokens)) for b in batches]
    busy_cores = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before) if pid else 1.0
    idle_cores = 0.0
    if pid:
        c0 = cpu_seconds(pid)
        time.sleep(2.0)
        idle_cores = (cpu_seconds(pid) - c0) / 2.0
    metrics = read_metrics(metrics_url)
    load = float(metrics.get("qwen3vl_model_load_seconds", 0.0))
    warmup = max((startup_seconds or load) - load, 0.0)
    doc = {
        "format": FORMAT,
        "name": name,
        "provenance": (
            f"Measured by planner.measure against a running Triton ({client.model}) on {os.uname().nodename}, "
            f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}: prefill from lone max_tokens=1 requests "
            f"(the model's TTFT histogram; the rest of the client's TTFT is the request overhead), "
            f"decode step = median gap between streamed tokens with ignore_eos at each batch size, "
            f"queue and batching settings from the model config, model load from qwen3vl_model_load_seconds"
            + (", CPU from /proc of the server's process tree" if pid else "")
            + (f", image pull given on the command line ({image_pull_seconds:g} s)" if image_pull_seconds else
               ", no image pull (local process)")
            + "."
        ),
        "gpus_per_pod": 0 if not _has_gpu_instance(config) else 1,
        "engine": {
            "slots": slots,
            "prefill_base_seconds": round(base, 6),
            "prefill_seconds_per_token": round(per_token, 8),
            "decode_step_seconds": [[b, round(s, 6)] for b, s in steps],
            "max_num_batched_tokens": engine.max_num_batched_tokens,
            "prompt_workers": engine.prompt_workers,
            "request_overhead_seconds": round(overhead, 6),
        },
        "triton": {
            "max_batch_size": int(config.get("max_batch_size", 1)),
            "max_queue_size": int(policy.get("max_queue_size", 0)),
            "queue_timeout_seconds": int(policy.get("default_timeout_microseconds", 0)) / 1e6,
            "preferred_batch_sizes": [int(v) for v in batching.get("preferred_batch_size", [])],
            "max_queue_delay_seconds": int(batching.get("max_queue_delay_microseconds", 0)) / 1e6,
        },
        "cold_start": {
            "image_pull_seconds": image_pull_seconds,
            "model_load_seconds": round(load, 3),
            "warmup_seconds": round(warmup, 3),
        },
        "cpu": {"request_cores": 1.0, "idle_cores": round(idle_cores, 3), "busy_cores": round(busy_cores, 3)},
        "gpu": {"busy_utilization_percent": 100.0},
        "measured": {
            "prefill_points": [[p, round(t, 6)] for p, t in prefill_points],
            "decode_tokens": decode_tokens,
            "startup_seconds": startup_seconds,
        },
    }
    return profile_from_json(doc)


def _has_gpu_instance(config: dict) -> bool:
    return any(g.get("kind") == "KIND_GPU" for g in config.get("instance_group") or [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m planner.measure", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="Triton gRPC address, e.g. 127.0.0.1:8001")
    p.add_argument("--metrics-url", help="Triton metrics URL, e.g. http://127.0.0.1:8002/metrics")
    p.add_argument("--start", action="store_true", help="start a local Triton (stack.triton) and time its start-up")
    p.add_argument("--pid", type=int, help="tritonserver's pid, for the CPU figures")
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--image-pull-seconds", type=float, default=0.0)
    p.add_argument("--decode-tokens", type=int, default=48)
    args = p.parse_args(argv)
    server = None
    startup = None
    if args.start:
        from stack.ports import free_port
        from stack.triton import TritonServer

        server = TritonServer(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        t0 = time.monotonic()
        server.start()
        startup = time.monotonic() - t0
        url, metrics_url, pid = server.grpc_url, server.metrics_url, server.process.pid
    elif args.url and args.metrics_url:
        url, metrics_url, pid = args.url, args.metrics_url, args.pid
    else:
        print("error: give --url and --metrics-url of a running Triton, or --start", file=sys.stderr)
        return 2
    try:
        client = Client(url)
        try:
            profile = measure_profile(client, metrics_url, args.name, pid=pid, startup_seconds=startup,
                                      image_pull_seconds=args.image_pull_seconds, decode_tokens=args.decode_tokens)
        finally:
            client.close()
    finally:
        if server is not None:
            server.stop()
    Path(args.out).write_text(json.dumps(profile.to_json(), indent=2) + "\n")
    print(json.dumps(profile.to_json()["engine"]), f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
