"""The benchmark's workloads through Triton (bench/gpu.py) replayed against one simulated pod: what
`bench.profile` fits the pod model to, and the check that the model still reproduces the GPU run."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from planner.pod import DONE, READY, Pod, Requests
from planner.profile import PodProfile

# bench/gpu.py sends one 448x448 image (28x28 patches of 16 px merged 2x2: 196 tokens) with
# PROMPTS[i % 8]; with the platform's chat template these are the prompts' token counts
# (tests/unit/planner/test_pod_model_h200.py checks them against the processor).
BENCH_PROMPT_TOKENS = (212, 212, 213, 213, 214, 211, 213, 215)
METRICS = ("tok/s", "TTFT p50", "TTFT p95")


@dataclass(frozen=True)
class Row:
    """One row of the benchmark: what the client saw, and the server's counts."""

    name: str
    clients: int  # closed loop: streams at once (0 for an open loop)
    rate: float  # open loop: Poisson arrivals per second (0 for a closed loop)
    tokens: int
    tok_s: float
    ttft_p50: float
    ttft_p95: float
    streams: float  # open loop: mean requests in flight; closed loop: 0 (not reported)
    batches: int  # `execute` calls
    prompts_per_pass: float  # the server's "chunks per prefill"

    def metric(self, name: str) -> float:
        return {"tok/s": self.tok_s, "TTFT p50": self.ttft_p50, "TTFT p95": self.ttft_p95}[name]


def measured_rows(section: dict) -> list[Row]:
    """The rows of one prefix-cache setting of a bench report (`report["triton"]["off"]`)."""
    rows = []
    for run in section["runs"]:
        server = run["server"]
        rows.append(Row(f"{run['clients']} clients", int(run["clients"]), 0.0, int(run["tokens"]),
                        float(run["tok_s_value"]), float(run["TTFT p50 ms"]) / 1000, float(run["TTFT p95 ms"]) / 1000,
                        0.0, int(server["batches"]), float(server["chunks per prefill"])))
    for run in section["paced"]:
        server = run["server"]
        rows.append(Row(f"{run['rate req/s']} req/s", 0, float(run["rate req/s"]), int(run["tokens"]),
                        float(run["tok/s"]), float(run["TTFT p50 ms"]) / 1000, float(run["TTFT p95 ms"]) / 1000,
                        float(run["streams (mean)"]), int(server["batches"]), float(server["chunks per prefill"])))
    return rows


def bench_arrivals(rate: float, seconds: float, seed: int = 0) -> list[float]:
    """bench.gpu.arrivals: the same Poisson send times for the same rate, span and seed."""
    rng, times, t = random.Random(seed), [], 0.0
    while (t := t + rng.expovariate(rate)) < seconds:
        times.append(t)
    return times


def _pod(profile: PodProfile, req: Requests) -> Pod:
    pod = Pod(0, 0.0, 0.0, profile, profile.step_table(), req, metrics_from=0.0)
    pod.state = READY
    return pod


def _requests(n: int, tokens: int) -> Requests:
    prompts = [BENCH_PROMPT_TOKENS[i % len(BENCH_PROMPT_TOKENS)] for i in range(n)]
    return Requests([0.0] * n, prompts, [tokens] * n)


def _row(like: Row, profile: PodProfile, pod: Pod, req: Requests) -> Row:
    status = np.asarray(req.status)
    if not np.all(status == DONE):
        missing = np.count_nonzero(status != DONE)
        raise RuntimeError(f"{like.name}: {missing} of {len(status)} requests did not complete")
    overhead = profile.request_overhead_seconds
    sent = np.asarray(req.arrival)
    done = np.asarray(req.done) + overhead
    ttft = np.asarray(req.ttft) + overhead
    span = float(done.max() - sent.min())
    return Row(like.name, like.clients, like.rate, like.tokens, len(sent) * like.tokens / span,
               float(np.percentile(ttft, 50)), float(np.percentile(ttft, 95)),
               float(np.sum(done - sent)) / span if like.rate else 0.0, pod.batches, len(sent) / max(pod.passes, 1))


def open_loop(profile: PodProfile, like: Row, seconds: float = 15.0, seed: int = 0) -> Row:
    """bench.gpu.drive_paced: Poisson sends whatever the answers before them (15 s: --rate-seconds)."""
    times = bench_arrivals(like.rate, seconds, seed)
    req = _requests(len(times), like.tokens)
    req.arrival = times
    pod = _pod(profile, req)
    for i, t in enumerate(times):
        pod.arrive(i, t)
    pod.advance(1e12)
    return _row(like, profile, pod, req)


def closed_loop(profile: PodProfile, like: Row, spread: float, rounds: int = 2) -> Row:
    """bench.gpu.drive: `clients` requests at once, sent over `spread` seconds as the client
    processes start their streams; the next round once every answer of the last has ended. One
    client sends 8 requests one after the other."""
    clients = like.clients
    rounds = 8 if clients == 1 else rounds
    req = _requests(clients * rounds, like.tokens)
    pod = _pod(profile, req)
    start = 0.0
    for r in range(rounds):
        for k in range(clients):
            i = r * clients + k
            req.arrival[i] = start + spread * k / clients
            pod.arrive(i, req.arrival[i])
        pod.advance(1e12)
        start = max(req.done[r * clients:(r + 1) * clients]) + profile.request_overhead_seconds
    return _row(like, profile, pod, req)


def replay(profile: PodProfile, like: Row, spread: float) -> Row:
    return closed_loop(profile, like, spread) if like.clients else open_loop(profile, like)


def errors(profile: PodProfile, rows: list[Row], spread: float) -> list[tuple[Row, Row]]:
    """(measured, simulated) for each row."""
    return [(row, replay(profile, row, spread)) for row in rows]
