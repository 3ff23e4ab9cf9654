"""The wire contract is written once: Triton's configs, the docs, the model's parser and both clients agree with it."""

import re
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

import wire_contract
from backend_python.config import Limits
from backend_python.metrics import FINISH_REASONS as MODEL_METRIC_REASONS
from backend_python.request import GenerationChunk, GenerationRequest
from clients.triton_stream import build_inputs
from frontend import generation, schemas
from frontend.generation import GenerationParams
from frontend.generation import GenerationRequest as FrontendRequest
from frontend.triton_client import to_triton_inputs
from wire_contract import INPUTS, OUTPUTS, WireRequest, WireResponse

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = [ROOT / "model_repository/qwen3_vl/config.pbtxt", *sorted((ROOT / "model_repository/qwen3_vl/configs").glob("*.pbtxt"))]
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image", "image": 0}, {"type": "text", "text": "Qu'est-ce que c'est ?"}]}]


def _table(tensors) -> dict:
    return {t.name: (model_config_pb2.DataType.Name(t.data_type), tuple(t.dims), getattr(t, "optional", False))
            for t in tensors}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_the_triton_configs_declare_exactly_the_contract_tensors(config):
    parsed = text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())
    assert parsed.name == wire_contract.MODEL_NAME
    assert _table(parsed.input) == {s.name: (s.config_type, s.dims, s.optional) for s in INPUTS.values()}
    assert _table(parsed.output) == {s.name: (s.config_type, s.dims, False) for s in OUTPUTS.values()}


def test_the_docs_list_exactly_the_contract_tensors():
    text = (ROOT / "docs/contracts.md").read_text()
    inputs, outputs = (text.split(heading, 1)[1].split("\n\n", 1)[0] for heading in ("\nInputs (", "\nOutputs ("))
    row = re.compile(r"^\| `(\w+)` \| (\w+)", re.M)
    assert dict(row.findall(inputs)) == {s.name: s.config_type for s in INPUTS.values()}
    assert dict(row.findall(outputs)) == {s.name: s.datatype for s in OUTPUTS.values()}


def _arrays(inputs) -> dict[str, np.ndarray]:
    """What Triton hands the model: each InferInput's bytes decoded as the server does."""
    arrays = {}
    for tensor in inputs:
        raw = tensor._get_content()
        if tensor.datatype() == "BYTES":
            array = deserialize_bytes_tensor(raw)
        else:
            array = np.frombuffer(raw, dtype=triton_to_np_dtype(tensor.datatype()))
        arrays[tensor.name()] = array.reshape(tensor.shape())
    return arrays


def _model_sees(inputs) -> GenerationRequest:
    return GenerationRequest.from_tensors(_arrays(inputs), Limits(), request_id="r")


def test_a_frontend_request_reaches_the_model_as_sent():
    sent = FrontendRequest(request_id="r", messages=MESSAGES, images=[b"\x89PNG-one"], params=GenerationParams(
        max_tokens=7, temperature=0.5, top_p=0.25, seed=-3, stop=("END", "ÉTÉ"), stream=False))
    got = _model_sees(to_triton_inputs(sent))
    assert [{"role": m.role, "content": list(m.content)} for m in got.messages][1] == MESSAGES[1]
    assert got.messages[0].content == ({"type": "text", "text": "Be brief."},)
    assert got.images == (b"\x89PNG-one",)
    assert (got.sampling.max_tokens, got.sampling.temperature, got.sampling.top_p, got.sampling.seed) == (7, 0.5, 0.25, -3)
    assert got.sampling.stop == ("END", "ÉTÉ") and got.stream is False and got.sampling.ignore_eos is False


def test_a_client_request_with_only_messages_gets_the_contract_defaults():
    got = _model_sees(build_inputs([{"role": "user", "content": "hi"}]))
    limits = Limits()
    assert got.sampling.max_tokens == limits.default_max_tokens
    assert (got.sampling.temperature, got.sampling.top_p, got.stream, got.sampling.ignore_eos) == (
        wire_contract.DEFAULT_TEMPERATURE, wire_contract.DEFAULT_TOP_P, wire_contract.DEFAULT_STREAM,
        wire_contract.DEFAULT_IGNORE_EOS)
    assert got.images == () and got.sampling.seed is None and got.sampling.stop == ()


def test_the_benchmark_flag_reaches_the_model():
    assert _model_sees(build_inputs([{"role": "user", "content": "go"}], max_tokens=5, ignore_eos=True)).sampling.ignore_eos


def test_every_request_tensor_has_the_declared_type_and_a_batch_of_one():
    arrays = WireRequest(MESSAGES, [b"a", b"b"], [b"v"], max_tokens=1, temperature=1.0, top_p=0.5, seed=1,
                         stop=["x"], stream=True, ignore_eos=True).to_arrays()
    assert set(arrays) == set(INPUTS)
    for name, array in arrays.items():
        assert array.shape[0] == 1 and array.dtype == INPUTS[name].array([]).dtype, name


@pytest.mark.parametrize("reason", [*wire_contract.FINISH_REASONS, ""])
def test_a_model_response_reads_back_in_the_clients(reason):
    sent = GenerationChunk(text="héllo", prompt_tokens=12, completion_tokens=3, finish_reason=reason, visual_tokens=8)
    arrays = sent.to_tensors()
    assert {name: (a.shape, a.dtype) for name, a in arrays.items()} == {
        name: ((1,), spec.array([]).dtype) for name, spec in OUTPUTS.items()}
    assert WireResponse.from_arrays(arrays.get) == WireResponse("héllo", reason, 12, 3, 8)


def test_a_response_between_a_streams_first_and_last_carries_only_the_deltas_outputs():
    arrays = GenerationChunk(text="é", prompt_tokens=12, completion_tokens=3, visual_tokens=8).to_tensors(full=False)
    assert set(arrays) == set(wire_contract.DELTA_OUTPUTS) == {"text_output", "completion_tokens"}
    assert WireResponse.from_arrays(arrays.get) == WireResponse("é", "", 0, 3, 0)


def test_the_finish_reasons_are_the_contract_s_everywhere():
    assert MODEL_METRIC_REASONS == (*wire_contract.FINISH_REASONS, "error")
    assert schemas.FinishReason is wire_contract.FinishReason
    assert generation.GenerationChunk.model_fields["finish_reason"].annotation == wire_contract.FinishReason | None
