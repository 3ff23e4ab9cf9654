"""The committed H100 pod profile is what `python -m bench.profile` makes of the committed benchmark
report and the GPU model config, so the planner simulates the pods that are deployed."""

import json
from pathlib import Path

import pytest

from bench.profile import GPU_CONFIG, from_report, served_config

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]
REPORT = "docs/bench/h100-bench-gpu.json"


def test_the_committed_profile_is_regenerated_from_the_committed_report():
    report = json.loads((ROOT / REPORT).read_text())
    profile = from_report(report, "h100-qwen3-vl-4b", REPORT).to_json()
    assert profile == json.loads((ROOT / "planner/profiles/h100-qwen3-vl-4b.json").read_text())


def test_the_profile_takes_its_engine_and_queue_settings_from_the_gpu_config():
    served = served_config(GPU_CONFIG.read_text())
    text = GPU_CONFIG.read_text()
    assert f'key: "max_num_seqs", value: {{ string_value: "{served["slots"]}" }}' in text
    assert f"max_batch_size: {served['max_batch_size']}" in text
    assert served["queue_timeout_seconds"] == 60.0


def test_a_config_without_a_setting_is_refused():
    with pytest.raises(ValueError, match="max_num_seqs"):
        served_config('max_batch_size: 64\nparameters [ { key: "max_num_batched_tokens", value: { string_value: "4" } } ]')
