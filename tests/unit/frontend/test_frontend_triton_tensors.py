import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from frontend.generation import GenerationParams, GenerationRequest
from frontend.triton_client import chunk_from_result, is_final, to_triton_inputs

pytestmark = pytest.mark.unit


def _by_name(inputs):
    return {tensor.name(): tensor for tensor in inputs}


def test_request_becomes_the_contract_tensors_with_batch_dimension():
    request = GenerationRequest(
        request_id="r1",
        messages=[{"role": "user", "content": [{"type": "image", "image": 0}, {"type": "text", "text": "hi"}]}],
        images=[b"\x89PNG-one", b"\xff\xd8-two"],
        params=GenerationParams(max_tokens=7, temperature=0.5, top_p=0.9, seed=42, stop=("END",), stream=False),
    )
    tensors = _by_name(to_triton_inputs(request))
    expected = {
        "messages": ("BYTES", [1, 1]),
        "images": ("BYTES", [1, 2]),
        "max_tokens": ("INT32", [1, 1]),
        "temperature": ("FP32", [1, 1]),
        "top_p": ("FP32", [1, 1]),
        "seed": ("INT64", [1, 1]),
        "stop": ("BYTES", [1, 1]),
        "stream": ("BOOL", [1, 1]),
    }
    assert {name: (t.datatype(), t.shape()) for name, t in tensors.items()} == expected
    messages_blob = tensors["messages"]._get_content()
    assert json.loads(messages_blob[4:]) == request.messages
    images_blob = tensors["images"]._get_content()
    assert images_blob == serialize_byte_tensor(np.array([b"\x89PNG-one", b"\xff\xd8-two"], dtype=np.object_)).item()
    assert np.frombuffer(tensors["max_tokens"]._get_content(), np.int32).tolist() == [7]
    assert np.frombuffer(tensors["seed"]._get_content(), np.int64).tolist() == [42]
    assert np.frombuffer(tensors["stream"]._get_content(), np.bool_).tolist() == [False]


def test_optional_inputs_are_left_out_when_unset():
    request = GenerationRequest(
        request_id="r2", messages=[{"role": "user", "content": "hi"}], params=GenerationParams(max_tokens=1)
    )
    assert set(_by_name(to_triton_inputs(request))) == {"messages", "max_tokens", "temperature", "top_p", "stream"}


def _response(text: bytes, reason: bytes, prompt: int, completion: int, final: bool | None) -> grpcclient.InferResult:
    response = service_pb2.ModelInferResponse(model_name="qwen3_vl", id="r1")
    for name, datatype, array in (
        ("text_output", "BYTES", np.array([[text]], dtype=np.object_)),
        ("finish_reason", "BYTES", np.array([[reason]], dtype=np.object_)),
        ("prompt_tokens", "INT32", np.array([[prompt]], dtype=np.int32)),
        ("completion_tokens", "INT32", np.array([[completion]], dtype=np.int32)),
    ):
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        raw = serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()
        response.raw_output_contents.append(raw)
    if final is not None:
        response.parameters["triton_final_response"].bool_param = final
    return grpcclient.InferResult(response)


def test_a_streamed_response_becomes_a_chunk():
    chunk = chunk_from_result(_response("héllo".encode(), b"", 12, 3, final=False))
    assert (chunk.text, chunk.finish_reason, chunk.prompt_tokens, chunk.completion_tokens) == ("héllo", None, 12, 3)


@pytest.mark.parametrize("reason", ["stop", "length", "cancelled"])
def test_the_last_response_carries_the_finish_reason(reason):
    result = _response(b"", reason.encode(), 12, 9, final=True)
    assert chunk_from_result(result).finish_reason == reason
    assert is_final(result)


def test_a_response_between_the_first_and_the_last_gets_the_prompts_counts_from_the_first():
    """Those responses carry only the delta's outputs (docs/contracts.md); a stream left early still
    reports its prompt tokens."""
    first = chunk_from_result(_response(b"a", b"", 12, 1, final=False))
    response = service_pb2.ModelInferResponse(model_name="qwen3_vl", id="r1")
    for name, datatype, array in (("text_output", "BYTES", np.array([[b"b"]], dtype=np.object_)),
                                  ("completion_tokens", "INT32", np.array([[2]], dtype=np.int32))):
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        raw = serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()
        response.raw_output_contents.append(raw)
    chunk = chunk_from_result(grpcclient.InferResult(response), first)
    assert (chunk.text, chunk.prompt_tokens, chunk.completion_tokens, chunk.finish_reason) == ("b", 12, 2, None)


def test_final_flag_is_false_when_absent():
    assert not is_final(_response(b"x", b"", 1, 1, final=None))
