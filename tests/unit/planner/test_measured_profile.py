"""The H200 pod profile is what `python -m bench.profile` makes of the committed GPU runs, and the
pod model it describes reproduces those runs: the check that fails when the model, the profile or
the simulator drifts from what the GPU measured.

The runs: docs/bench/h200-prefill-graphs-on-f91aca0.json (through Triton, prefix cache off, one
448x448 image and a question, 512-token answers) and docs/bench/h200-engine-f91aca0.json. Each
loaded row is replayed through one simulated pod (planner/replay.py): the closed loop of 64 clients
(two rounds) and the Poisson arrivals at 8, 16 and 24 requests/s for 15 s (24 is past the pod's
capacity: its queue grows through the run). tok/s and TTFT p50/p95 must each be within 15 % of the
measurement; all twelve are (the worst, 24 req/s TTFT p50, -14.2 %). That run has no 128-client row;
the profile of the engine before the prefill's graphs (1f9b375), kept beside it, reproduces that
engine's run, 128 clients included, within the same 15 %.

Seven numbers of the model are fitted to these same rows (bench.profile.FIT; everything else is
read off the runs), so this is a consistency check of the committed profile, not an independent
prediction. Fits that leave one row out predict it within the figures in docs/planner/README.md
(2026-12-02).
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench.profile import GPU_CONFIG, build, read_off, served_config, targets
from planner.profile import load_profile
from planner.replay import BENCH_PROMPT_TOKENS, METRICS, measured_rows, replay

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]
TRITON = json.loads((ROOT / "docs/bench/h200-prefill-graphs-on-f91aca0.json").read_text())
ENGINE = json.loads((ROOT / "docs/bench/h200-engine-f91aca0.json").read_text())
# The engine run above started with warm compile caches; this one (the engine before the prefill's
# graphs, on a new machine) did not: what compiling adds to a start comes from it.
COLD = json.loads((ROOT / "docs/bench/h200-engine-0d27c6f.json").read_text())
PROFILE = load_profile(ROOT / "planner/profiles/h200-qwen3-vl-4b.json")
SPREAD = PROFILE.measured["bench_client_spread_seconds"]
ROWS = targets(measured_rows(TRITON["triton"]["off"]))
TOLERANCE = 0.15
# The engine before the prefill's graphs (1f9b375), fitted the same way to its own run, which has the
# 128-client burst the run above lacks.
BEFORE_TRITON = json.loads((ROOT / "docs/bench/h200-paged-triton-1f9b375.json").read_text())
BEFORE_ENGINE = json.loads((ROOT / "docs/bench/h200-paged-engine-alone-1f9b375.json").read_text())
BEFORE = load_profile(ROOT / "planner/profiles/h200-qwen3-vl-4b-1f9b375.json")
BEFORE_ROWS = targets(measured_rows(BEFORE_TRITON["triton"]["off"]))


FITS = {"f91aca0": (PROFILE, TRITON, ENGINE, COLD), "1f9b375": (BEFORE, BEFORE_TRITON, BEFORE_ENGINE, None)}
CASES = [(fit, row) for fit, (_, triton, _, _) in FITS.items() for row in targets(measured_rows(triton["triton"]["off"]))]


@pytest.mark.parametrize("fit", FITS)
def test_the_profile_is_what_bench_profile_reads_off_the_committed_runs(fit):
    """Everything but the seven fitted numbers comes from the runs and the served config as committed."""
    profile, triton, engine, cold = FITS[fit]
    served = served_config(GPU_CONFIG.read_text(), triton.get("parameters"))
    rebuilt = build(read_off(triton, engine, cold), served, profile.measured["fitted"], profile.name,
                    profile.provenance, profile.measured)
    assert rebuilt == profile


def test_the_loaded_rows_are_those_of_the_runs():
    assert [r.name for r in ROWS] == ["64 clients", "8 req/s", "16 req/s", "24 req/s"]
    assert [r.name for r in BEFORE_ROWS] == ["64 clients", "128 clients", "8 req/s", "16 req/s", "24 req/s"]


@pytest.mark.parametrize("fit,row", CASES, ids=[f"{fit}-{row.name}" for fit, row in CASES])
def test_the_pod_model_reproduces_the_h200_run(fit, row):
    profile = FITS[fit][0]
    sim = replay(profile, row, profile.measured["bench_client_spread_seconds"])
    report = {m: f"predicted {sim.metric(m):.3f}, measured {row.metric(m):.3f}" for m in METRICS}
    for metric in METRICS:
        assert sim.metric(metric) == pytest.approx(row.metric(metric), rel=TOLERANCE), (row.name, report)


def test_a_drifted_model_fails_the_check():
    """Decode steps a quarter faster (a pod model that forgot Triton's per-stream cost, say): the
    check names the rows that no longer agree."""
    faster = replace(PROFILE, decode_step_seconds=tuple((b, s * 0.75) for b, s in PROFILE.decode_step_seconds))
    off = [(r.name, m) for r in ROWS for m in METRICS
           if abs(replay(faster, r, SPREAD).metric(m) / r.metric(m) - 1) > TOLERANCE]
    assert ("24 req/s", "TTFT p50") in off and ("8 req/s", "TTFT p95") in off and len(off) >= 4, off


def test_the_replayed_prompts_are_the_benchmarks():
    """bench/gpu.py's requests through the platform's chat template and tokenizer (those the GPU run's
    checkpoint was built with): one of the eight questions and a 448x448 image, whose placeholder
    the processor expands to one token per 2x2 patches of 16 px."""
    import jinja2
    import tokenizers

    from bench.gpu import PROMPTS

    checkpoint = ROOT / "var/checkpoints/tiny"
    tokenizer = tokenizers.Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    template = jinja2.Environment().from_string((checkpoint / "chat_template.jinja").read_text())
    vision = json.loads((checkpoint / "processor_config.json").read_text())["image_processor"]
    image_tokens = (448 // (vision["patch_size"] * vision["merge_size"])) ** 2
    counts = []
    for question in PROMPTS:
        parts = [{"type": "image"}, {"type": "text", "text": question}]
        text = template.render(messages=[{"role": "user", "content": parts}], add_generation_prompt=True)
        counts.append(len(tokenizer.encode(text, add_special_tokens=False).ids) - 1 + image_tokens)
    assert image_tokens == 196
    assert tuple(counts) == BENCH_PROMPT_TOKENS


def test_the_profile_takes_its_engine_and_queue_settings_from_the_gpu_config():
    served = served_config(GPU_CONFIG.read_text())
    text = GPU_CONFIG.read_text()
    assert f'key: "max_num_seqs", value: {{ string_value: "{served["slots"]}" }}' in text
    assert f'key: "max_num_batched_tokens", value: {{ string_value: "{served["max_num_batched_tokens"]}" }}' in text
    assert f"max_batch_size: {served['max_batch_size']}" in text
    assert served["queue_timeout_seconds"] == 60.0 and served["preferred_batch_sizes"] == (16, 32, 64)
    assert (PROFILE.slots, PROFILE.max_num_batched_tokens) == (served["slots"], served["max_num_batched_tokens"])


def test_a_config_without_a_setting_is_refused():
    with pytest.raises(ValueError, match="max_num_seqs"):
        served_config('max_batch_size: 64\nparameters [ { key: "max_num_batched_tokens", value: { string_value: "4" } } ]')
