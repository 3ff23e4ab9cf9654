"""`make bench-scaleout`: Triton replicas, one per GPU, behind the frontend's router, loaded through the OpenAI API.

    python -m bench.scaleout [--gpus N] [--shared-gpu] [--model PATH] [--tokens 512] [--rates 8 12 16 ...]
                             [--rate-seconds S] [--refine K] [--event-seconds S] [--event-start S]
                             [--frontends K] [--clients P] [--param KEY=VALUE] [--cpu] [--plot FILE]

Replica i runs with CUDA_VISIBLE_DEVICES=i on 127.0.0.(i+1) (the same ports on each, as pods have);
the frontend lists all N from the start and routes each request to the least occupied ready one.
In order:
- capacity with 1 replica: Poisson arrivals at each --rates value until TTFT p95 exceeds 1 s or a
  request fails, then --refine halvings between the last rate that held and the first that did not;
- the scale event: 1.5 x that capacity on replica 1 alone; --event-start s into the load replicas
  2..N are started (as new pods would be): when they are ready, when they take their share of the
  requests the frontend routes, when TTFT p95 is back under 1 s, failed requests, a plot;
- capacity with N replicas (N times each rate), and the N-to-1 ratio.
Every request is make bench-gpu's: one 448x448 image and a question, --tokens tokens, streamed from
/v1/chat/completions. The frontend does not forward ignore_eos, so the answers' mean length is
printed beside each row. A replica's share is its own nv_inference_request_success; the frontends'
CPU per request says how near they are to their limit (--frontends K puts K of them side by side).
--shared-gpu: every replica on GPU 0 with kv_cache_budget_gib 50 (one replica alone has 113.5 GiB).
Without a GPU (or with --cpu) the same flow runs on the CPU, tiny checkpoint, default config.
Prints tables; writes $OUT/scaleout.json (`replica_capacity_req_s` is what the planner reads) and
$OUT/scaleout-event.png (or later, where matplotlib is installed: --plot scaleout.json).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.gpu import OUT, PROMPTS, _key_value, _summary, arrivals, image_bytes, log, server_counters
from bench.stats import percentile, table
from stack.frontend import FrontendServer
from stack.ports import free_port
from stack.process import ServerProcess
from stack.triton import TritonServer, has_gpu, loopback_replicas

TTFT_LIMIT_S = 1.0
# Two processes on one 140 GiB H200: each holds ~13 GiB besides its KV cache (weights, the largest
# step's activations, CUDA graphs and context), and 0.9 of the card is what one replica uses alone.
# gpu_memory_utilization cannot split a card: a replica counts the other's memory as "outside" its share.
SHARED_KV_GIB = "50"
GPU_MODEL = Path("/tmp/qwen3-vl-4b-random")  # make bench-gpu's: the 4B architecture with random weights
SAMPLE_S = 0.5  # how often the scale event reads the frontend's per-replica counters
WINDOW_S = 5.0  # TTFT p95 over requests sent in windows this long
READ_TIMEOUT_S = 600.0
ROUTING_WINDOW_S = 2.0  # a replica's share of the requests routed in the last this many seconds


# -- the clients: OpenAI streaming chats from a few processes, each with an event loop ---------

_BODIES: dict[int, list[bytes]] = {}


def _body(i: int, tokens: int) -> bytes:
    image = base64.b64encode(image_bytes(i)).decode()
    return json.dumps({"model": "qwen3-vl", "stream": True, "max_tokens": tokens,
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": [
                           {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                           {"type": "text", "text": PROMPTS[i]}]}]}).encode()


async def _chat(client: httpx.AsyncClient, url: str, body: bytes) -> tuple:
    """One streamed completion, as bench.gpu records a gRPC stream: (ok, tokens, TTFT, gaps, sent,
    finished, error)."""
    sent, times, tokens, finish, error = time.monotonic(), [], 0, None, ""
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", content=body,
                                 headers={"content-type": "application/json"}) as response:
            if response.status_code != 200:
                error = f"HTTP {response.status_code}: {(await response.aread())[:300]!r}"
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    error = f"error event after {len(times)} chunks: {event['error'].get('message')}"
                    break
                tokens = (event.get("usage") or {}).get("completion_tokens", tokens)
                for choice in event["choices"]:
                    if choice["delta"].get("content"):
                        times.append(time.monotonic())
                    finish = choice.get("finish_reason") or finish
    except httpx.HTTPError as exc:
        error = repr(exc)
    if not error and finish is None:
        error = "the stream ended without a finish reason"
    gaps = [b - a for a, b in zip(times, times[1:])]
    return (not error, tokens, times[0] - sent if times else None, gaps, sent, time.monotonic(), error)


async def _send(urls: list[str], items: list[tuple[int, float]], bodies: list[bytes]) -> list[tuple]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=READ_TIMEOUT_S), limits=limits) as client:
        async def at(i: int, when: float) -> tuple:
            await asyncio.sleep(max(0.0, when - time.monotonic()))
            return await _chat(client, urls[i % len(urls)], bodies[i % len(bodies)])

        return await asyncio.gather(*(at(i, when) for i, when in items))


def _client_worker(args: tuple) -> list[tuple]:
    """One client process: its requests, each (index, monotonic time to send it at), spread over the
    frontends at ``urls``."""
    urls, items, tokens = args
    if tokens not in _BODIES:
        _BODIES[tokens] = [_body(i, tokens) for i in range(len(PROMPTS))]
    return asyncio.run(_send(urls, items, _BODIES[tokens])) if items else []


# -- what the servers say ------------------------------------------------------------------------

def cpu_seconds(server: ServerProcess) -> float:
    """CPU time so far of a server and its children (Triton's backend stub runs the model)."""
    total = 0.0
    for pid in [server.process.pid, *server.child_pids()]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


def successes(replica: TritonServer) -> float:
    """Requests the replica answered, by its own count."""
    return server_counters(replica.metrics_url)["nv_inference_request_success"]


def routed_so_far(frontends: list[FrontendServer]) -> dict[str, float]:
    """Requests the frontends have sent to each replica: ended (any outcome) plus streaming now."""
    counts: dict[str, float] = {}
    for frontend in frontends:
        text = httpx.get(f"{frontend.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in ("frontend_upstream_requests_total", "frontend_upstream_in_flight"):
                    replica = sample.labels["replica"]
                    counts[replica] = counts.get(replica, 0.0) + sample.value
    return counts


class Sampler(threading.Thread):
    """Reads ``routed_so_far`` every SAMPLE_S seconds until stopped: (monotonic time, counts) pairs."""

    def __init__(self, frontends: list[FrontendServer]):
        super().__init__(daemon=True)
        self.frontends, self.samples, self.stopped = frontends, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_S):
            try:
                self.samples.append((time.monotonic(), routed_so_far(self.frontends)))
            except httpx.HTTPError:
                continue


# -- one run at one rate --------------------------------------------------------------------------

class Fleet:
    """The replicas, the frontends and the client processes of the whole benchmark."""

    def __init__(self, replicas: list[TritonServer], frontends: list[FrontendServer], tokens: int, procs: int):
        self.replicas, self.frontends, self.tokens = replicas, frontends, tokens
        self.urls = [f.url for f in frontends]
        self.pool = mp.get_context("spawn").Pool(procs)
        self.procs = procs
        self.pool.map(_client_worker, [(self.urls, [], tokens)] * procs)  # processes up, bodies built

    @property
    def serving(self) -> list[TritonServer]:
        return [r for r in self.replicas if r.running]

    def run(self, rate: float, seconds: float, seed: int = 0,
            at: tuple[float, Callable[[], None]] | None = None) -> dict:
        """Requests at Poisson arrival times for ``seconds``, every answer awaited; ``at`` = (s, f):
        call f that many seconds after the first send (the scale event starts replicas there)."""
        times = arrivals(rate, seconds, seed)
        servers = [*self.frontends, *self.replicas]
        cpu = {id(s): cpu_seconds(s) for s in servers if s.running}
        success = {r.grpc_url: successes(r) for r in self.serving}
        start = time.monotonic() + 0.5  # every process has its schedule before the first send
        shares = [[(i, start + t) for i, t in enumerate(times) if i % self.procs == p] for p in range(self.procs)]
        pending = self.pool.map_async(_client_worker, [(self.urls, s, self.tokens) for s in shares if s])
        if at is not None:
            time.sleep(max(0.0, start + at[0] - time.monotonic()))
            at[1]()
        results = [r for chunk in pending.get() for r in chunk]
        time.sleep(0.5)  # Triton's counters of the last answers
        summary = _summary(results, 0, start)
        served = {r.grpc_url: successes(r) - success.get(r.grpc_url, 0) for r in self.serving}
        used = {id(s): cpu_seconds(s) - cpu.get(id(s), 0.0) for s in servers if s.running}
        tritons = sum(used.get(id(r), 0.0) for r in self.replicas)
        frontends = sum(used[id(f)] for f in self.frontends)
        row = summary.row()
        answered = max(summary.requests, 1)
        out = {"replicas": str(len(self.serving)), "rate req/s": f"{rate:g}", "requests": row["requests"],
               "errors": row["errors"], "tok/s": row["tok/s"], "tokens/answer": f"{summary.tokens / answered:.0f}",
               "chunks/answer": f"{len(summary.itl) / answered + 1:.0f}",
               "streams (mean)": f"{sum(summary.latency) / summary.seconds:.1f}",
               **{k: row[k] for k in ("TTFT p50 ms", "TTFT p95 ms", "ITL p50 ms", "ITL p95 ms")},
               "share %": "/".join(f"{100 * n / max(sum(served.values()), 1):.0f}" for n in served.values()),
               "frontend CPU %": f"{100 * frontends / summary.seconds:.0f}",
               "frontend CPU ms/req": f"{1000 * frontends / answered:.1f}",
               "Triton CPU %": f"{100 * tritons / summary.seconds:.0f}"}
        log(f"{len(self.serving)} replica(s), {rate:g} req/s: {out}")
        first_error = next((r[6] for r in results if not r[0]), "")
        return {"row": out, "rate": rate, "ttft_p95_s": percentile(summary.ttft, 95), "errors": summary.errors,
                "tok_s": summary.tokens_per_s, "served": served, "first_error": first_error, "start": start,
                "requests": [(r[4] - start, r[2], r[0]) for r in results]}  # (sent s, TTFT s or None, ok)

    def close(self) -> None:
        self.pool.terminate()


def holds(run: dict) -> bool:
    return run["errors"] == 0 and run["ttft_p95_s"] <= TTFT_LIMIT_S


def capacity(fleet: Fleet, rates: list[float], seconds: float, refine: int) -> dict:
    """The highest rate (over ``rates``, then ``refine`` halvings) at which TTFT p95 stays within the limit."""
    runs, good, bad = [], None, None
    for rate in rates:
        runs.append(fleet.run(rate, seconds, seed=len(runs)))
        if not holds(runs[-1]):
            bad = runs[-1]
            break
        good = runs[-1]
    for _ in range(refine if good and bad else 0):
        runs.append(fleet.run((good["rate"] + bad["rate"]) / 2, seconds, seed=len(runs)))
        good, bad = (runs[-1], bad) if holds(runs[-1]) else (good, runs[-1])
    return {"replicas": len(fleet.serving), "capacity_req_s": good["rate"] if good else 0.0,
            "bound": f"{bad['rate']:g} did not hold" if good and bad else "above every rate tried" if good
            else "below every rate tried",
            "tok_s": good["tok_s"] if good else 0.0, "runs": runs}


# -- the scale event -------------------------------------------------------------------------------

def scale_event(fleet: Fleet, rate: float, seconds: float, start_after: float) -> dict:
    """``rate`` on the replicas now serving; ``start_after`` s in, the others start (each as a new pod)."""
    new = [r for r in fleet.replicas if not r.running]
    marks: dict[str, float] = {}

    def start(replica: TritonServer) -> None:
        replica.start(timeout=900)
        marks[f"{replica.grpc_url} ready"] = time.monotonic()

    def start_new() -> None:
        marks["started"] = time.monotonic()
        with ThreadPoolExecutor(len(new)) as pool:  # together, as the pods of one scale-up
            list(pool.map(start, new))
        log(f"{len(new)} new replica(s) ready {time.monotonic() - marks['started']:.1f} s after their start")

    sampler = Sampler(fleet.frontends)
    sampler.start()
    try:
        run = fleet.run(rate, seconds, seed=100, at=(start_after, start_new))
    finally:
        sampler.stopped.set()
        sampler.join()
    zero = run["start"]
    addresses = [r.grpc_url for r in fleet.replicas]
    routed = [(t - zero, [counts.get(a, 0.0) for a in addresses]) for t, counts in sampler.samples]
    started = marks["started"] - zero
    ready = max(v for k, v in marks.items() if k.endswith("ready")) - zero
    share_at = share_taken(routed, [addresses.index(r.grpc_url) for r in new], after=started)
    recovered = ttft_recovered(run["requests"], after=started)
    event = {"rate": rate, "seconds": seconds, "started_s": started, "ready_s": ready,
             "share_taken_s": share_at, "ttft_recovered_s": recovered, "failed": run["errors"],
             "first_error": run["first_error"], "row": run["row"], "served": run["served"], "routed": routed,
             "replicas": addresses, "requests": run["requests"]}
    after = lambda t: "never" if t is None else f"{t - started:.1f} s"  # noqa: E731
    log(f"scale event: ready after {ready - started:.1f} s, its share after {after(share_at)}, "
        f"TTFT p95 back within {TTFT_LIMIT_S:g} s after {after(recovered)}; {run['errors']} failed requests")
    return event


def routing_shares(routed: list[tuple[float, list[float]]]) -> list[tuple[float, list[float]]]:
    """(time, each replica's share of the requests routed in the ROUTING_WINDOW_S seconds before it),
    where any were."""
    lag = round(ROUTING_WINDOW_S / SAMPLE_S)
    return [(t1, [(b - a) / (sum(c1) - sum(c0)) for a, b in zip(c0, c1)])
            for (_, c0), (t1, c1) in zip(routed, routed[lag:]) if sum(c1) > sum(c0)]


def share_taken(routed: list[tuple[float, list[float]]], new: list[int], after: float) -> float | None:
    """When the replicas at indexes ``new`` first got 90 % of their even share of the routed requests."""
    even = len(new) / len(routed[0][1])
    return next((t for t, shares in routing_shares(routed)
                 if t >= after and sum(shares[k] for k in new) >= 0.9 * even), None)


def windows(requests: list[tuple], width: float = WINDOW_S) -> list[tuple[float, float]]:
    """(window start, TTFT p95) over the requests sent in each window of ``width`` seconds; a failed
    request counts as the clients' read timeout."""
    end = max(sent for sent, _, _ in requests)
    out, t = [], 0.0
    while t <= end:
        ttft = [x if ok and x is not None else READ_TIMEOUT_S for sent, x, ok in requests if t <= sent < t + width]
        if ttft:
            out.append((t, percentile(ttft, 95)))
        t += width
    return out


def ttft_recovered(requests: list[tuple], after: float) -> float | None:
    """When TTFT p95 was back within the limit for good: the start of the first window (of those that
    end after ``after``) from which every window holds; ``after`` itself if none ever failed."""
    found = None
    for t, p95 in windows(requests):
        if t + WINDOW_S <= after:
            continue
        if p95 > TTFT_LIMIT_S:
            found = None
        elif found is None:
            found = max(t, after)
    return found


def plot(report: dict, path: Path) -> None:
    """TTFT of every request by send time, its p95 per window, the start and the ready marked; below,
    each replica's share of the requests routed per window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    event = report["scale_event"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, height_ratios=[2, 1])
    good = [(sent, ttft) for sent, ttft, ok in event["requests"] if ok and ttft is not None]
    failed = [sent for sent, _, ok in event["requests"] if not ok]
    top.scatter([s for s, _ in good], [t for _, t in good], s=4, alpha=0.4, label="TTFT of a request")
    p95 = windows(event["requests"])
    p95.append((p95[-1][0] + WINDOW_S, p95[-1][1]))  # the last window drawn to its end
    top.step([t for t, _ in p95], [v for _, v in p95], where="post", color="black", label=f"p95 per {WINDOW_S:g} s")
    if failed:
        top.scatter(failed, [TTFT_LIMIT_S] * len(failed), marker="x", color="red", label="failed")
    top.axhline(TTFT_LIMIT_S, color="grey", linestyle=":", label=f"{TTFT_LIMIT_S:g} s")
    top.set_yscale("log")
    top.set_ylabel("time to first token (s)")
    shares = routing_shares(event["routed"])
    for k in range(len(event["replicas"])):
        bottom.plot([t for t, _ in shares], [100 * s[k] for _, s in shares], label=f"replica {k + 1}")
    bottom.set_ylabel(f"% of requests routed\n(last {ROUTING_WINDOW_S:g} s)")
    bottom.set_xlabel("seconds since the load began")
    for axis in (top, bottom):
        axis.axvline(event["started_s"], color="green", linestyle="--", label="new replica started")
        axis.axvline(event["ready_s"], color="green", label="new replica ready")
        axis.legend(loc="upper right", fontsize=8)
    top.set_title(f"{report['device']}\n{event['rate']:g} req/s (1.5 x one replica's capacity), "
                  f"{report['tokens']} tokens per answer", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the whole benchmark ------------------------------------------------------------------------------

def gpu_count() -> int:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return out.stdout.count("GPU ") if out.returncode == 0 else 0


def gpu_model(model: str | None) -> str:
    """--model, or make bench-gpu's random-weight 4B, built in a process of its own (this one keeps no
    CUDA context on GPU 0 beside replica 1)."""
    if model:
        return model
    log(f"the Qwen3-VL-4B architecture with random weights at {GPU_MODEL}")
    subprocess.run([sys.executable, "-m", "backend_python.checkpoint", "--out", str(GPU_MODEL), "--size", "4b",
                    "--device", "cuda"], check=True)
    return str(GPU_MODEL)


def processes(args: argparse.Namespace, gpus: int, parameters: dict[str, str]) -> tuple[list, list]:
    """The Triton replicas (replica i on GPU i, or all on GPU 0) and the frontends, none started."""
    servers = loopback_replicas(args.gpus, model_path=gpu_model(args.model) if gpus else args.model,
                                config_name="gpu" if gpus else None, parameters=parameters or None)
    for i, server in enumerate(servers):
        server.log_file = str(OUT / f"scaleout-triton-{i + 1}.log")
        server.env["CUDA_VISIBLE_DEVICES"] = "" if not gpus else "0" if args.shared_gpu else str(i)
    env = {"FRONTEND_TRITON_GRPC_URL": ",".join(s.grpc_url for s in servers),
           "FRONTEND_TRITON_METRICS_PORT": str(servers[0].metrics_port), "FRONTEND_UI_ENABLED": "false",
           "FRONTEND_MAX_TOKENS_LIMIT": str(max(args.tokens, 2048))}
    frontends = [FrontendServer(port=free_port(), log_file=str(OUT / f"scaleout-frontend-{k + 1}.log"), env=env)
                 for k in range(args.frontends)]
    return servers, frontends


def measure(args: argparse.Namespace, servers: list[TritonServer], frontends: list[FrontendServer],
            rates: list[float], report: dict) -> None:
    """The --parts in order (capacity with replica 1, the scale event, capacity with all), into ``report``
    as they end. Without the scale event the other replicas start before the capacity with all."""
    started = time.monotonic()
    servers[0].start(timeout=1800)
    log(f"replica 1 ready after {time.monotonic() - started:.1f} s")
    for frontend in frontends:
        frontend.start()
    fleet = Fleet(servers, frontends, args.tokens, args.clients)
    report["capacity"] = {}
    try:
        log("warm-up (untimed):")
        fleet.run(rates[0], max(5.0, args.rate_seconds / 4), seed=99)
        if "one" in args.parts:
            report["capacity"]["1"] = capacity(fleet, rates, args.rate_seconds, args.refine)
            report["replica_capacity_req_s"] = report["capacity"]["1"]["capacity_req_s"]
            save(report)
        one = report.get("replica_capacity_req_s") or args.one_replica_capacity or rates[0]
        if "event" in args.parts and args.gpus > 1:
            report["scale_event"] = scale_event(fleet, 1.5 * one, args.event_seconds, args.event_start)
            save(report)
        if "all" in args.parts and args.gpus > 1:
            with ThreadPoolExecutor(args.gpus) as pool:
                list(pool.map(lambda s: s.start(timeout=1800), [s for s in servers if not s.running]))
            report["capacity"][str(args.gpus)] = capacity(fleet, [r * args.gpus for r in rates], args.rate_seconds,
                                                          args.refine)
    finally:
        fleet.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=2, help="replicas: one per GPU (with --shared-gpu, all on GPU 0)")
    parser.add_argument("--shared-gpu", action="store_true",
                        help=f"every replica on GPU 0, KV cache {SHARED_KV_GIB} GiB each")
    parser.add_argument("--model", default=os.environ.get("MODEL_PATH"))
    parser.add_argument("--tokens", type=int, default=512, help="max_tokens of every request")
    parser.add_argument("--rates", type=float, nargs="+", help="arrival rates per replica, increasing "
                        "(default 8 12 16 20 24 28 32 on a GPU, 0.5 1 1.5 2 3 4 on the CPU)")
    parser.add_argument("--rate-seconds", type=float, default=20, help="how long each rate sends")
    parser.add_argument("--refine", type=int, default=2, help="halvings between the last rate held and the first not")
    parser.add_argument("--event-seconds", type=float, default=120, help="how long the scale event's load lasts")
    parser.add_argument("--event-start", type=float, default=20, help="when in it the new replicas start")
    parser.add_argument("--parts", nargs="+", default=["one", "event", "all"], choices=["one", "event", "all"],
                        help="capacity with replica 1, the scale event, capacity with all (a device call lasts "
                             "at most 10 minutes: run them in two)")
    parser.add_argument("--one-replica-capacity", type=float,
                        help="req/s: replica 1's capacity from an earlier run, for the event and the ratio "
                             "when --parts leaves out one")
    parser.add_argument("--frontends", type=int, default=1,
                        help="frontend processes, each routing over every replica; requests go to them in turn")
    parser.add_argument("--clients", type=int, default=max(1, min(8, (os.cpu_count() or 1) // 4)),
                        help="client processes")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", type=_key_value,
                        help="override a model parameter of the served config (repeatable)")
    parser.add_argument("--cpu", action="store_true", help="the CPU flow even where a GPU is seen (the test)")
    parser.add_argument("--plot", type=Path, help="only draw the scale event's plot from this scaleout.json")
    args = parser.parse_args()
    if args.plot:
        plot(json.loads(args.plot.read_text()), args.plot.with_name("scaleout-event.png"))
        return
    gpus = 0 if args.cpu or not has_gpu() else gpu_count()
    if gpus and gpus < (1 if args.shared_gpu else args.gpus):
        parser.error(f"--gpus {args.gpus}: this machine has {gpus} GPU(s); --shared-gpu puts them all on GPU 0")
    if "one" not in args.parts and not args.one_replica_capacity:
        parser.error("without the part one, give --one-replica-capacity (scaleout.json's replica_capacity_req_s)")
    parameters = dict(args.param)
    if gpus and args.shared_gpu:
        parameters.setdefault("kv_cache_budget_gib", SHARED_KV_GIB)
    rates = args.rates or ([8, 12, 16, 20, 24, 28, 32] if gpus else [0.5, 1, 1.5, 2, 3, 4])
    OUT.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    device = (f"{gpus} GPU(s), {'every replica on GPU 0' if args.shared_gpu else 'one replica per GPU'}" if gpus
              else f"CPU only ({os.cpu_count()} cores shared by every process: replicas, frontends, clients)")
    device += f", {args.frontends} frontend process(es)"
    print(f"# python -m bench.scaleout {' '.join(sys.argv[1:])}\n# commit {commit}; {device}; "
          f"{time.strftime('%Y-%m-%d')}; load average {os.getloadavg()[0]:.1f} (others' processes show there)",
          flush=True)
    report: dict = {"device": device, "commit": commit, "tokens": args.tokens, "ttft_p95_limit_s": TTFT_LIMIT_S,
                    "replicas": args.gpus, "shared_gpu": args.shared_gpu, "frontends": args.frontends,
                    "parameters": parameters, "one_replica_capacity_given": args.one_replica_capacity}
    servers, frontends = processes(args, gpus, parameters)
    try:
        measure(args, servers, frontends, rates, report)
    finally:
        for server in [*frontends, *servers]:
            server.stop()
    capacities = {n: c["capacity_req_s"] for n, c in report["capacity"].items()}
    report["per_replica_capacity_req_s"] = {n: c / int(n) for n, c in capacities.items()}
    one = capacities.get("1") or args.one_replica_capacity
    if str(args.gpus) in capacities and args.gpus > 1 and one:
        report[f"ratio_{args.gpus}_to_1"] = capacities[str(args.gpus)] / one
    save(report)
    print_report(report)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if "scale_event" in report:
        try:
            plot(report, OUT / "scaleout-event.png")
            print(f"plot: {OUT / 'scaleout-event.png'}")
        except ImportError:
            print(f"no matplotlib here: python -m bench.scaleout --plot {OUT / 'scaleout.json'} where it is installed")


def save(report: dict) -> None:
    (OUT / "scaleout.json").write_text(json.dumps(report, indent=1, default=str))


def print_report(report: dict) -> None:
    print(f"\n{report['device']}; {report['tokens']} tokens per request; capacity = the highest Poisson rate "
          f"with TTFT p95 <= {report['ttft_p95_limit_s']:g} s and no failed request")
    print(table([run["row"] for c in report["capacity"].values() for run in c["runs"]]))
    rows = [{"replicas": n, "capacity req/s": f"{c['capacity_req_s']:g}", "bound": c["bound"],
             "tok/s at capacity": f"{c['tok_s']:.0f}", "per replica req/s": f"{c['capacity_req_s'] / int(n):g}"}
            for n, c in report["capacity"].items()]
    print(table(rows))
    ratio = next((v for k, v in report.items() if k.startswith("ratio_")), None)
    if ratio is not None:
        print(f"{report['replicas']}-to-1 capacity ratio: {ratio:.2f} (goal >= 1.9)")
    event = report.get("scale_event")
    if event:
        since = lambda t: "never" if t is None else f"{t - event['started_s']:.1f} s"  # noqa: E731
        print(f"\nscale event at {event['rate']:g} req/s:")
        print(table([{"new replicas ready": since(event["ready_s"]),
                      "their share of routing": since(event["share_taken_s"]),
                      f"TTFT p95 <= {report['ttft_p95_limit_s']:g} s again": since(event["ttft_recovered_s"]),
                      "failed requests": str(event["failed"]), "share %": event["row"]["share %"],
                      "TTFT p95 ms (whole run)": event["row"]["TTFT p95 ms"]}]))
        if event["first_error"]:
            print(f"first failure: {event['first_error']}")


if __name__ == "__main__":
    main()
