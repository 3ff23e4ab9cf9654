"""A GPU benchmark run (`make bench-gpu`, through Triton, open-loop rates included) as a planner pod
profile: the pod model of planner/pod.py fitted to what the GPU measured (planner/README.md, "The pod
model", says what each number is).

    python -m bench.profile docs/bench/h200-prefill-graphs-on-f91aca0.json \\
        --engine docs/bench/h200-engine-f91aca0.json --cold-engine docs/bench/h200-engine-0d27c6f.json \\
        --name h200-qwen3-vl-4b --out planner/profiles/h200-qwen3-vl-4b.json

Read off the runs: the engine's limits (the served config and the KV cache the model reported),
the decode step alone at 1, 64 and 128 sequences and its cost per cached token (KV bytes per token
over the measured copy bandwidth), prefill alone (the lone request's time in the engine; the long
prompts for the cost per token and per token squared), `execute`'s host time per request, the
response path's delay (alone, and growing with the streams), the cold start. Fitted, by replaying
the run's own workloads through one simulated pod (planner/replay.py): how a prefill pass shares
the engine with decoding, what the stub's GIL costs the engine, Triton's per-stream cost of a step.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from dataclasses import replace
from pathlib import Path

from planner.profile import ColdStart, PodProfile
from planner.replay import BENCH_PROMPT_TOKENS, METRICS, Row, measured_rows, replay

GPU_CONFIG = Path(__file__).resolve().parents[1] / "model_repository" / "qwen3_vl" / "configs" / "gpu.pbtxt"
# Assumptions, stated in the profile and overridable in the planner (--image-pull-seconds,
# --node-provision-seconds): a ~10 GB CUDA image at ~100 MB/s; GPU nodes already in the pool.
IMAGE_PULL_SECONDS = 100.0
NODE_PROVISION_SECONDS = 0.0
FIT = ("prefill_seconds_per_prompt", "decode_steps_per_prefill", "prefill_decode_seconds",
       "prefill_decode_seconds_per_sequence", "execute_engine_share", "triton_seconds_per_stream",
       "client_spread_seconds")


def served_config(text: str, overrides: dict[str, str] | None = None) -> dict[str, int | float]:
    """What the simulator needs of the model config the benchmark served (configs/gpu.pbtxt and the
    run's --param overrides), with the engine's own defaults for what the config leaves out."""
    from backend_python.config import EngineConfig

    def number(pattern: str) -> str:
        found = re.search(pattern, text)
        if not found:
            raise ValueError(f"{GPU_CONFIG.name}: no match for {pattern!r}")
        return found.group(1)

    parameters = dict(re.findall(r'key: "(\w+)", value: \{ string_value: "([^"]*)" \}', text)) | (overrides or {})
    if "max_num_seqs" not in parameters:
        raise ValueError(f"{GPU_CONFIG.name}: no max_num_seqs parameter")
    engine = EngineConfig.from_parameters(parameters, environ={"MODEL_PATH": "unused"})
    return {"slots": engine.max_num_seqs, "max_num_batched_tokens": engine.max_num_batched_tokens,
            "prompt_workers": engine.prompt_workers, "max_batch_size": int(number(r"max_batch_size: (\d+)")),
            "max_queue_size": int(number(r"max_queue_size: (\d+)")),
            "max_queue_delay_seconds": int(number(r"max_queue_delay_microseconds: (\d+)")) / 1e6,
            "preferred_batch_sizes": tuple(int(v) for v in number(r"preferred_batch_size: \[([\d, ]+)\]").split(",")),
            "queue_timeout_seconds": int(number(r"default_timeout_microseconds: (\d+)")) / 1e6}


def _ready_split(line: str) -> dict[str, float]:
    """'qwen3_vl ready in 22.3 s (weights 8.2 s, ..., decode warm-up 7.9 s, ...)' -> {'decode': 7.9, ...}"""
    return {name: float(s) for name, s in re.findall(r"(\w+) warm-up ([\d.]+) s", line)}


def read_off(triton: dict, engine: dict, cold: dict | None = None) -> dict:
    """Everything taken from the runs without simulating: the profile's fixed part. ``cold``: an engine
    run whose start had empty compile caches, when ``engine``'s did not (for what compiling adds)."""
    off = triton["triton"]["off"]
    alone = engine["engine"]
    runs = {r["clients"]: r for r in off["runs"]}
    one = runs["1"]
    prompt = statistics.fmean(BENCH_PROMPT_TOKENS)
    kv_tokens = int(re.search(r"KV cache of (\d+) tokens", off["cold_start_model"]).group(1))
    kv_bytes = alone["capacity"]["kv_gib"] * 2**30 / alone["capacity"]["kv_tokens"]
    per_cached = kv_bytes / (triton["copy_bandwidth_GBps"] * 1e9)
    # The engine alone: b sequences of 512 tokens at once; a step = the answer's span after its first token.
    steps = []
    for b in (1, 64, 128):
        burst = alone[f"burst_{b}x512"]
        per_token = (b * 512 / burst["tok/s"] - burst["TTFT p50 ms"] / 1000) / 511
        steps.append((b, per_token - per_cached * b * (prompt + 256)))
    # Prefill alone, text only: a 31-token turn (a cached prefix), the 33,605- and 134,409-token prompts.
    turn = alone["chat_1024px"][1]
    base = turn["ttft_ms"] / 1000
    x1, t1 = alone["long_32k"]["prompt_tokens"], alone["long_32k"]["ttft_ms"] / 1000 - base
    x2, t2 = alone["long_128k"]["prompt_tokens"], alone["long_128k"]["ttft_ms"] / 1000 - base
    squared = (t2 / x2 - t1 / x1) / (x2 - x1)
    per_token = t1 / x1 - squared * x1
    # Through Triton, one client: the engine's TTFT is `execute` (the prompt built) plus the pass.
    execute = float(one["server"]["execute ms"]) / 1000
    engine_ttft = float(one["server"]["engine TTFT ms"]) / 1000
    lone_pass = engine_ttft - execute
    # what the client waits beyond Triton's queue (its batcher's delay, simulated) and the engine
    lone_lag = one["ttft_p50"] - engine_ttft - float(one["server"]["queue ms"]) / 1000
    # Beyond that, under load: the response waits behind the other streams' tokens.
    growth = []
    for row, streams in [(r, float(r["clients"])) for r in off["runs"] if int(r["clients"]) >= 16] + \
                        [(r, float(r["streams (mean)"])) for r in off["paced"]]:
        server = row["server"]
        lag = (float(row["TTFT p50 ms"]) - float(server["queue ms"]) - float(server["engine TTFT ms"])) / 1000
        if lag > 0:  # a saturated run's means and medians disagree (negative): no reading
            growth.append((lag - lone_lag) / streams**2)
    model_split = _ready_split(off["cold_start_model"])
    cold_split = (cold or engine)["engine"]["engine_start_split"]
    compile_seconds = (cold_split["decode"] - model_split["decode"]) + (cold_split["vision"] - model_split["vision"])
    return {
        "kv_cache_tokens": kv_tokens,
        "decode_seconds_per_cached_token": per_cached,
        "engine_steps": steps,
        "prefill_seconds_per_token": per_token,
        "prefill_seconds_per_token_squared": squared,
        "lone_pass_seconds": lone_pass,
        "execute_seconds_per_request": execute,
        "request_overhead_seconds": lone_lag,
        "response_seconds_per_stream_squared": max(statistics.median(growth), 0.0) if growth else 0.0,
        "cold_start": ColdStart(
            image_pull_seconds=IMAGE_PULL_SECONDS, model_load_seconds=round(off["cold_start_ready_s"], 1),
            warmup_seconds=round(off["cold_start_first_token_s"] - off["cold_start_ready_s"], 1),
            node_provision_seconds=NODE_PROVISION_SECONDS, compile_seconds=round(compile_seconds, 1)),
    }


def build(fixed: dict, served: dict, params: dict[str, float], name: str = "fit", provenance: str = "",
          measured: dict | None = None) -> PodProfile:
    """The profile for one choice of the fitted parameters."""
    per_stream = params["triton_seconds_per_stream"]
    prompt_tokens = statistics.fmean(BENCH_PROMPT_TOKENS)
    per_prompt = params["prefill_seconds_per_prompt"]
    lone = fixed["lone_pass_seconds"] - fixed["prefill_seconds_per_token"] * prompt_tokens \
        - fixed["prefill_seconds_per_token_squared"] * prompt_tokens**2
    return PodProfile(
        name=name, provenance=provenance, gpus_per_pod=1, **served,
        kv_cache_tokens=fixed["kv_cache_tokens"],
        decode_step_seconds=tuple((b, round(s + per_stream * b, 7)) for b, s in fixed["engine_steps"]),
        decode_seconds_per_cached_token=float(f"{fixed['decode_seconds_per_cached_token']:.4g}"),
        prefill_base_seconds=round(lone - per_prompt, 6),
        prefill_seconds_per_prompt=round(per_prompt, 6),
        prefill_seconds_per_token=float(f"{fixed['prefill_seconds_per_token']:.4g}"),
        prefill_seconds_per_token_squared=float(f"{fixed['prefill_seconds_per_token_squared']:.4g}"),
        decode_steps_per_prefill=int(round(params["decode_steps_per_prefill"])),
        prefill_decode_seconds=float(f"{params['prefill_decode_seconds']:.4g}"),
        prefill_decode_seconds_per_sequence=float(f"{params['prefill_decode_seconds_per_sequence']:.4g}"),
        execute_seconds_per_request=round(fixed["execute_seconds_per_request"], 6),
        execute_engine_share=round(min(max(params["execute_engine_share"], 0.0), 1.0), 4),
        request_overhead_seconds=round(fixed["request_overhead_seconds"], 6),
        response_seconds_per_stream_squared=float(f"{fixed['response_seconds_per_stream_squared']:.4g}"),
        cold_start=fixed["cold_start"],
        cpu_request_cores=4.0, cpu_idle_cores=0.1, cpu_busy_cores=1.0, gpu_busy_utilization_percent=100.0,
        measured=measured or {},
    )


def targets(rows: list[Row]) -> list[Row]:
    """What the model must reproduce: every loaded row (a lone client's row fixes the lone costs)."""
    return [r for r in rows if r.clients != 1]


def _loss(pairs: list[tuple[Row, Row]]) -> float:
    """The worst relative error of tok/s and TTFT p50/p95, plus a little of their spread and of the
    other counts the run reports (the open loop's mean streams, `execute` calls, prompts per pass)."""
    errors, others = [], []
    for real, sim in pairs:
        errors += [sim.metric(m) / real.metric(m) - 1 for m in METRICS]
        if real.rate:
            others.append(sim.streams / real.streams - 1)
        others += [sim.batches / real.batches - 1, sim.prompts_per_pass / real.prompts_per_pass - 1]
    rms = lambda values: math.sqrt(sum(v * v for v in values) / len(values))  # noqa: E731
    return max(abs(e) for e in errors) + 0.2 * rms(errors) + 0.1 * rms(others)


def _nelder_mead(f, x0: list[float], step: list[float], iterations: int) -> tuple[list[float], float]:
    """The plain simplex search: the simulator's output is piecewise constant in its inputs, so no gradients."""
    n = len(x0)
    points = [list(x0)] + [[x0[j] + (step[j] if j == i else 0.0) for j in range(n)] for i in range(n)]
    values = [f(p) for p in points]
    for _ in range(iterations):
        order = sorted(range(n + 1), key=values.__getitem__)
        points, values = [points[i] for i in order], [values[i] for i in order]
        centre = [sum(p[j] for p in points[:-1]) / n for j in range(n)]
        worst = points[-1]
        reflected = [c + (c - w) for c, w in zip(centre, worst)]
        fr = f(reflected)
        if fr < values[0]:
            expanded = [c + 2 * (c - w) for c, w in zip(centre, worst)]
            fe = f(expanded)
            points[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            points[-1], values[-1] = reflected, fr
        else:
            contracted = [c + 0.5 * (w - c) for c, w in zip(centre, worst)]
            fc = f(contracted)
            if fc < values[-1]:
                points[-1], values[-1] = contracted, fc
            else:
                points = [points[0]] + [[b + 0.5 * (p - b) for b, p in zip(points[0], q)] for q in points[1:]]
                values = [values[0]] + [f(p) for p in points[1:]]
    best = min(range(n + 1), key=values.__getitem__)
    return points[best], values[best]


# Starting points and steps of the search, in the order of FIT.
# The last is where the engine with the prefill's graphs (f91aca0) fits: a cheap prefill holds few decode steps.
STARTS = ([0.001, 25, 0.001, 1e-5, 0.15, 1.5e-5, 0.3], [0.004, 18, 0.002, 5e-6, 0.25, 1e-5, 0.2],
          [0.0005, 30, 0.0005, 2e-5, 0.1, 2e-5, 0.4], [0.004, 6, 0.0001, 2e-5, 0.18, 2e-5, 0.06])
STEPS = [0.001, 3, 0.001, 5e-6, 0.05, 4e-6, 0.05]


def fit(fixed: dict, served: dict, rows: list[Row], iterations: int = 400) -> tuple[dict[str, float], float]:
    """The fitted parameters that reproduce `rows` best (deterministic: fixed starting points)."""
    lone_room = fixed["lone_pass_seconds"]

    def loss(x: list[float]) -> float:
        params = dict(zip(FIT, x))
        if min(x) < 0 or params["execute_engine_share"] > 1 or params["prefill_seconds_per_prompt"] > 0.9 * lone_room:
            return math.inf
        profile = build(fixed, served, params)
        try:
            return _loss([(r, replay(profile, r, params["client_spread_seconds"])) for r in rows])
        except RuntimeError:
            return math.inf

    best: tuple[list[float], float] | None = None
    for start in STARTS:
        x, value = _nelder_mead(loss, start, STEPS, iterations)
        if best is None or value < best[1]:
            best = (x, value)
    assert best is not None
    return dict(zip(FIT, best[0])), best[1]


def comparison(profile: PodProfile, rows: list[Row], spread: float) -> list[dict]:
    """Predicted against measured, per row and metric (what the profile records and the test checks)."""
    out = []
    for real in rows:
        sim = replay(profile, real, spread)
        for metric in METRICS:
            out.append({"row": real.name, "metric": metric, "measured": round(real.metric(metric), 4),
                        "predicted": round(sim.metric(metric), 4),
                        "error": round(sim.metric(metric) / real.metric(metric) - 1, 4)})
    return out


def from_reports(triton: dict, engine: dict, name: str, sources: tuple[str, ...],
                 exclude: tuple[str, ...] = (), cold: dict | None = None) -> PodProfile:
    served = served_config(GPU_CONFIG.read_text(), triton.get("parameters"))
    fixed = read_off(triton, engine, cold)
    rows = targets(measured_rows(triton["triton"]["off"]))
    params, loss = fit(fixed, served, [r for r in rows if r.name not in exclude])
    provenance = (
        f"Fitted by `python -m bench.profile` to {sources[0]} (through Triton gRPC, prefix cache off: a 448x448 "
        f"image and a question, 512-token answers, closed loops of 1/64/128 clients and Poisson arrivals) and "
        f"{sources[1]} (the engine alone) on one {triton['gpu']}: Qwen3-VL-4B-Instruct's architecture, random "
        "weights, bfloat16, configs/gpu.pbtxt. Read off the runs: limits, decode steps alone and per cached "
        "token, lone prefill, long prompts, execute's host time, the response delay, the cold start with warm "
        "compile caches (compile_seconds: what empty caches add, from the first start of "
        f"{sources[2] if len(sources) > 2 else 'the engine run'}). Fitted "
        "(replaying the run's workloads): " + ", ".join(FIT) + ". Assumed: the image pull (a ~10 GB CUDA "
        "image at ~100 MB/s), node provisioning (none: GPU nodes already in the pool), CPU use."
    )
    measured = {"sources": list(sources), "fitted": params,
                "fit_loss": round(loss, 4), "excluded_from_fit": list(exclude),
                "bench_client_spread_seconds": round(params["client_spread_seconds"], 4)}
    profile = build(fixed, served, params, name, provenance, measured)
    measured["comparison"] = comparison(profile, rows, params["client_spread_seconds"])
    return replace(profile, measured=measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="bench.gpu --parts triton report (JSON)")
    parser.add_argument("--engine", type=Path, required=True, help="bench.gpu --parts engine report (JSON)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", default="h200-qwen3-vl-4b")
    parser.add_argument("--cold-engine", type=Path,
                        help="an engine report whose start had empty compile caches (default: --engine's)")
    parser.add_argument("--exclude", action="append", default=[], metavar="ROW",
                        help="leave a row out of the fit (e.g. '16 req/s') to see how well it is predicted")
    args = parser.parse_args()
    cold = json.loads(args.cold_engine.read_text()) if args.cold_engine else None
    sources = (str(args.report), str(args.engine)) + ((str(args.cold_engine),) if args.cold_engine else ())
    profile = from_reports(json.loads(args.report.read_text()), json.loads(args.engine.read_text()), args.name,
                           sources, tuple(args.exclude), cold)
    args.out.write_text(json.dumps(profile.to_json(), indent=2) + "\n")
    for row in profile.measured["comparison"]:
        print(f"{row['row']:>12} {row['metric']:>9}: predicted {row['predicted']:9.3f} measured {row['measured']:9.3f} "
              f"({100 * row['error']:+.1f} %)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
