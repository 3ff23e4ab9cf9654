"""The only module that talks gRPC to Triton; its tensors come from wire_contract.

One `tritonclient.grpc.aio.InferenceServerClient` lives for the whole process. Each
generation opens its own bidirectional stream on that channel, so cancelling one
request (client gone, Stop pressed) cancels exactly one gRPC call, which Triton turns
into a cancelled request for the model.

The aio `stream_infer` builds requests itself and refuses `triton_*` parameters, so
`enable_empty_final_response` cannot be set through it. The end of a generation is
therefore read from the model's own contract (`finish_reason` is non-empty on the last
response), with Triton's `triton_final_response` flag honoured when present.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from wire_contract import FINISH_REASONS, INPUTS, WireRequest, WireResponse

from frontend.errors import (
    FrontendError,
    UpstreamInternal,
    from_grpc_status,
    from_triton_message,
)
from frontend.generation import GenerationChunk, GenerationRequest

MAX_MESSAGE_BYTES = 2**31 - 1

CHANNEL_ARGS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect quickly after a Triton restart; gRPC's default backoff grows to 120 s.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]

CALL_END_TIMEOUT_S = 5.0


def to_triton_inputs(request: GenerationRequest) -> list[grpcclient.InferInput]:
    """The request as the contract's tensors (wire_contract.WireRequest builds them)."""
    params = request.params
    wire = WireRequest(
        messages=request.messages, images=request.images, max_tokens=params.max_tokens,
        temperature=params.temperature, top_p=params.top_p, seed=params.seed, stop=params.stop, stream=params.stream,
    )
    return [
        grpcclient.InferInput(name, list(array.shape), INPUTS[name].datatype).set_data_from_numpy(array)
        for name, array in wire.to_arrays().items()
    ]


def chunk_from_result(result: grpcclient.InferResult) -> GenerationChunk:
    response = WireResponse.from_arrays(result.as_numpy)
    return GenerationChunk(
        text=response.text,
        finish_reason=response.finish_reason if response.finish_reason in FINISH_REASONS else None,
        prompt_tokens=response.prompt_tokens,
        completion_tokens=response.completion_tokens,
    )


def is_final(result: grpcclient.InferResult) -> bool:
    parameters = result.get_response().parameters
    return "triton_final_response" in parameters and parameters["triton_final_response"].bool_param


class TritonClient:
    """Owns the long-lived gRPC channel; created and closed by the app's lifespan."""

    def __init__(self, url: str, model_name: str, *, request_timeout_s: float, ready_timeout_s: float) -> None:
        self.url = url
        self.model_name = model_name
        self._request_timeout_s = request_timeout_s
        self._ready_timeout_s = ready_timeout_s
        self._client: grpcclient_aio.InferenceServerClient | None = None

    async def start(self) -> None:
        self._client = grpcclient_aio.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def _grpc(self) -> grpcclient_aio.InferenceServerClient:
        if self._client is None:
            raise RuntimeError("TritonClient.start() was not awaited")
        return self._client

    async def is_ready(self) -> tuple[bool, str]:
        """(ready, reason): Triton reachable and the model loaded and ready."""
        try:
            if not await self._grpc.is_server_ready(client_timeout=self._ready_timeout_s):
                return False, "Triton is not ready"
            if not await self._grpc.is_model_ready(self.model_name, client_timeout=self._ready_timeout_s):
                return False, f"model {self.model_name!r} is not ready"
        except InferenceServerException as exc:
            return False, f"Triton is not reachable: {exc.message()}"
        return True, "ready"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Yield the model's responses until the last; raise a FrontendError on failure."""
        inputs = to_triton_inputs(request)

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": self.model_name, "inputs": inputs, "request_id": request.request_id}

        try:
            responses = self._grpc.stream_infer(one_request(), stream_timeout=self._request_timeout_s)
        except InferenceServerException as exc:
            raise _classify(exc) from None
        received = 0
        last = False
        try:
            while True:
                try:
                    result, error = await responses.__anext__()
                except StopAsyncIteration:
                    if received == 0:
                        raise UpstreamInternal("Triton closed the stream without a response") from None
                    yield GenerationChunk(text="", finish_reason="stop")
                    return
                except grpc.aio.AioRpcError as exc:
                    raise from_grpc_status(exc.code().name, exc.details() or "") from None
                if error is not None:
                    raise _classify(error)
                received += 1
                chunk = chunk_from_result(result)
                final = is_final(result)
                if final and chunk.finish_reason is None:
                    chunk = chunk.model_copy(update={"finish_reason": "stop"})
                # Set before the yield: a caller that stops at the last chunk closes this generator there.
                last = chunk.finish_reason is not None
                yield chunk
                if last:
                    return
        finally:
            if last:
                await _await_call_end(responses)
            else:
                responses.cancel()


async def _await_call_end(responses: Any) -> None:
    """After the last response, let Triton end the call itself; cancel only if it does not.

    Cancelling a call whose final response Triton is still writing makes Triton 2.51 keep that
    request for ever (its gRPC frontend issues a cancellation no callback will ever answer): the
    model then never unloads, and a SIGTERM ends in the exit timeout instead of a clean exit.
    """
    ended = False
    try:
        await asyncio.wait_for(_drain(responses), CALL_END_TIMEOUT_S)
        ended = True
    except (asyncio.TimeoutError, grpc.aio.AioRpcError):
        pass
    finally:
        if not ended:
            responses.cancel()


async def _drain(responses: Any) -> None:
    async for _ in responses:
        pass


def _classify(exc: InferenceServerException) -> FrontendError:
    status = exc.status()
    message = exc.message() or str(exc)
    if status:
        return from_grpc_status(status.removeprefix("StatusCode."), message)
    return from_triton_message(message)
