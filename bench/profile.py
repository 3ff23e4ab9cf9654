"""The GPU benchmark's report as a planner pod profile (planner/README.md documents the format).

    python -m bench.profile docs/bench/h100-bench-gpu.json --out planner/profiles/h100-qwen3-vl-4b.json

Decode step time per batch size = the captured step's GPU time (256 cached tokens) or the
engine's measured host work per step, whichever is longer (the host prepares and streams one step
while the device runs the next); prefill = time to first token at one client over the
prompt's tokens; cold start = the measured start to ready and to first token.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from planner.profile import ColdStart, PodProfile

# What the benchmark's request costs in prompt tokens: one 448x448 image (28x28 patches of 16 px,
# merged 2x2: 196 tokens) plus the chat template and a short question.
BENCH_PROMPT_TOKENS = 196 + 22
GPU_CONFIG = Path(__file__).resolve().parents[1] / "model_repository" / "qwen3_vl" / "configs" / "gpu.pbtxt"


def served_config(text: str) -> dict[str, int | float]:
    """What the simulator needs of the model config the benchmark served (configs/gpu.pbtxt)."""

    def number(pattern: str) -> str:
        found = re.search(pattern, text)
        if not found:
            raise ValueError(f"{GPU_CONFIG.name}: no match for {pattern!r}")
        return found.group(1)

    def parameter(key: str) -> str:
        return number(rf'key: "{key}", value: {{ string_value: "(\d+)" }}')

    # The simulator's pod admits whole prompts: as many of the bench's prompts as one step's token budget holds.
    return {"slots": int(parameter("max_num_seqs")),
            "prefills_per_step": int(parameter("max_num_batched_tokens")) // BENCH_PROMPT_TOKENS,
            "max_batch_size": int(number(r"max_batch_size: (\d+)")),
            "max_queue_size": int(number(r"max_queue_size: (\d+)")),
            "queue_timeout_seconds": int(number(r"default_timeout_microseconds: (\d+)")) / 1e6}


def from_report(report: dict, name: str, source: str) -> PodProfile:
    engine = report.get("engine_steps", {})
    steps = []
    for key, gpu_ms in sorted(report["graph_replay_ms"].items(), key=lambda kv: int(kv[0].split("x")[0])):
        rows, span = (int(v) for v in key.split("x"))
        if span != 256 or (engine and str(rows) not in engine):
            continue
        host = engine.get(str(rows), {})
        if "host_launch_ms" in host:  # the engine overlaps its host work with the step before
            step_ms = max(gpu_ms, host["host_launch_ms"] + host.get("host_stream_ms", 0.0))
        else:
            step_ms = gpu_ms + host.get("host_prepare_ms", 0.0) + host.get("host_stream_ms", 0.0)
        steps.append((rows, round(step_ms / 1000, 5)))
    # The shortest answers the report has, where prefill weighs most (older reports have one length).
    tokens = min((r.get("tokens") for r in report["runs"]), key=lambda t: int(t or 0))
    runs = [r for r in report["runs"] if r.get("tokens") == tokens]
    single = next(r for r in runs if r["clients"] == "1")
    ttft = float(single["ttft_p50"])
    ready = report["cold_start_ready_s"]
    served = served_config(GPU_CONFIG.read_text())
    for key, value in report.get("parameters", {}).items():  # the run's --param overrides
        if key in served:
            served[key] = int(value)
    return PodProfile(
        name=name,
        provenance=(
            f"Measured by `make bench-gpu` ({source}) on one {report['gpu']}: Qwen3-VL-4B-Instruct's "
            "architecture, random weights, bfloat16, configs/gpu.pbtxt. Decode steps: CUDA-graph GPU time at 256 "
            "cached tokens plus the engine's host work per step; prefill: time to first token at one client "
            f"over the {BENCH_PROMPT_TOKENS}-token image prompt; model load and warm-up: start to ready and "
            "ready to first token. Assumed: the image pull (a ~10 GB CUDA image at ~100 MB/s) and CPU use."
        ),
        **served,
        prefill_base_seconds=0.0,
        prefill_seconds_per_token=round(ttft / BENCH_PROMPT_TOKENS, 6),
        decode_step_seconds=tuple(steps),
        cold_start=ColdStart(image_pull_seconds=100.0, model_load_seconds=round(ready, 1),
                             warmup_seconds=round(report["cold_start_first_token_s"] - ready, 1)),
        cpu_request_cores=4.0, cpu_idle_cores=0.1, cpu_busy_cores=1.0,
        gpu_busy_utilization_percent=100.0,
        measured={"source": source, "tokens_per_request": tokens,
                  "tok_s_by_clients": {r["clients"]: r["tok_s_value"] for r in runs},
                  "copy_bandwidth_GBps": report["copy_bandwidth_GBps"]},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", default="h100-qwen3-vl-4b")
    args = parser.parse_args()
    profile = from_report(json.loads(args.report.read_text()), args.name, str(args.report))
    args.out.write_text(json.dumps(profile.to_json(), indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
