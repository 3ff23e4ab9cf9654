"""Engine settings come from Triton's parameters, once, with clear errors for mistakes."""

import re
from pathlib import Path

import pytest

from backend_python.config import EngineConfig

pytestmark = pytest.mark.unit
MODEL_DIR = Path(__file__).resolve().parents[3] / "model_repository" / "qwen3_vl"


def test_parameters_are_typed_and_model_path_falls_back_to_the_environment():
    config = EngineConfig.from_parameters(
        {"max_num_seqs": {"string_value": "3"}, "cuda_graphs": {"string_value": "false"},
         "max_images": {"string_value": "2"}, "model_path": {"string_value": ""}},
        environ={"MODEL_PATH": "/models/qwen"},
    )
    assert (config.max_num_seqs, config.cuda_graphs, config.limits.max_images, config.model_path) == (3, False, 2, "/models/qwen")


def test_an_unknown_parameter_is_refused():
    with pytest.raises(ValueError, match="unknown model parameters: \\['max_num_seq'\\]"):
        EngineConfig.from_parameters({"max_num_seq": "3"}, environ={"MODEL_PATH": "x"})


def test_a_parameter_of_the_slot_engine_names_its_new_name():
    with pytest.raises(ValueError, match="'max_seq_len' is now max_model_len; 'slots' is now max_num_seqs"):
        EngineConfig.from_parameters({"slots": "3", "max_seq_len": "2048"}, environ={"MODEL_PATH": "x"})


def test_a_bad_value_names_the_parameter():
    with pytest.raises(ValueError, match="'max_num_seqs': 'many' is not a valid int"):
        EngineConfig.from_parameters({"max_num_seqs": "many"}, environ={"MODEL_PATH": "x"})


def test_a_step_budget_too_small_for_a_decode_step_is_refused():
    with pytest.raises(ValueError, match="max_num_batched_tokens \\(8\\) must hold a decode step"):
        EngineConfig.from_parameters({"max_num_seqs": "16", "max_num_batched_tokens": "8"},
                                     environ={"MODEL_PATH": "x"})


def test_a_negative_prefill_graph_size_is_refused():
    with pytest.raises(ValueError, match="prefill_graph_tokens must be >= 0"):
        EngineConfig.from_parameters({"prefill_graph_tokens": "-1"}, environ={"MODEL_PATH": "x"})


def test_a_negative_decode_gap_during_prefill_is_refused():
    with pytest.raises(ValueError, match="decode_gap_during_prefill must be >= 0"):
        EngineConfig.from_parameters({"decode_gap_during_prefill": "-0.5"}, environ={"MODEL_PATH": "x"})
    assert EngineConfig.from_parameters({"decode_gap_during_prefill": "1.5"},
                                        environ={"MODEL_PATH": "x"}).decode_gap_during_prefill == 1.5


def test_no_model_is_a_clear_error():
    with pytest.raises(ValueError, match="MODEL_PATH"):
        EngineConfig.from_parameters({}, environ={})


@pytest.mark.parametrize("name", ["config.pbtxt", "configs/gpu.pbtxt"])
def test_the_shipped_model_configs_load(name):
    """A mistyped key in the GPU config would otherwise show only when a GPU server starts."""
    text = (MODEL_DIR / name).read_text()
    parameters = dict(re.findall(r'key: "(\w+)", value: \{ string_value: "([^"]*)" \}', text))
    assert len(parameters) == text.count("key:"), "every parameter in the one form the test reads"
    config = EngineConfig.from_parameters(parameters, environ={"MODEL_PATH": "/models/qwen"})
    assert config.max_num_seqs == int(parameters["max_num_seqs"])


@pytest.mark.parametrize("name", ["config.pbtxt", "configs/gpu.pbtxt", "configs/gpu-shared.pbtxt"])
def test_the_shipped_queues_hold_a_preferred_batch(name):
    """Triton counts requests the batcher holds for a preferred batch against max_queue_size: with a
    smaller queue, requests that arrive together are refused while the model is idle (measured with a
    queue of 2 and preferred batches of 4: the third of three was refused in 10 of 10 bursts)."""
    text = (MODEL_DIR / name).read_text()
    queue = int(re.search(r"max_queue_size: (\d+)", text).group(1))
    preferred = [int(n) for n in re.search(r"preferred_batch_size: \[([^\]]*)\]", text).group(1).split(",")]
    assert queue >= max(preferred), f"{name}: max_queue_size {queue} < preferred batch {max(preferred)}"


def test_docs_configuration_lists_every_model_parameter_and_no_other():
    """docs/configuration.md is where users look the parameters up: it names each one the engine reads."""
    import dataclasses

    from backend_python.config import Limits

    docs = (MODEL_DIR.parents[1] / "docs" / "configuration.md").read_text()
    section = docs.split("## Model parameters", 1)[1].split("\n## ", 1)[0]
    documented = {name for row in re.findall(r"^\| (`[^|]+) \|", section, flags=re.M)
                  for name in re.findall(r"`(\w+)`", row)}
    fields = {f.name for cls in (EngineConfig, Limits) for f in dataclasses.fields(cls)} - {"limits"}
    assert documented == fields
