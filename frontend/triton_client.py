"""Generations on Triton over gRPC: a replica chosen by load for each, its stream, and the retry before the first token.

One `tritonclient.grpc.aio.InferenceServerClient` per Triton replica lives for the whole
process (frontend/replicas.py keeps them and checks them). Each generation opens its own
bidirectional stream on the chosen replica's channel, so cancelling one request (client gone,
Stop pressed) cancels exactly one gRPC call, which Triton turns into a cancelled request for
the model.

The aio `stream_infer` builds requests itself and refuses `triton_*` parameters, so
`enable_empty_final_response` cannot be set through it. The end of a generation is
therefore read from the model's own contract (`finish_reason` is non-empty on the last
response), with Triton's `triton_final_response` flag honoured when present.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from wire_contract import FINISH_REASONS, INPUTS, WireRequest, WireResponse

from frontend.discovery import Targets
from frontend.errors import (
    FrontendError,
    UpstreamInternal,
    UpstreamOverloaded,
    UpstreamUnavailable,
    from_grpc_status,
    from_triton_message,
    spec_for,
)
from frontend.generation import GenerationChunk, GenerationRequest
from frontend.metrics import FrontendMetrics
from frontend.replicas import ReplicaSet
from frontend.settings import Settings

log = logging.getLogger(__name__)

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
        messages=request.messages, images=request.images, videos=request.videos, max_tokens=params.max_tokens,
        temperature=params.temperature, top_p=params.top_p, seed=params.seed, stop=params.stop, stream=params.stream,
    )
    return [
        grpcclient.InferInput(name, list(array.shape), INPUTS[name].datatype).set_data_from_numpy(array)
        for name, array in wire.to_arrays().items()
    ]


def chunk_from_result(result: grpcclient.InferResult, first: GenerationChunk | None = None) -> GenerationChunk:
    """``first``: the stream's first chunk. The responses between the first and the last carry no prompt
    counts (docs/contracts.md): every chunk gets them from the first, so a stream left early has them."""
    response = WireResponse.from_arrays(result.as_numpy)
    return GenerationChunk(
        text=response.text,
        finish_reason=response.finish_reason if response.finish_reason in FINISH_REASONS else None,
        prompt_tokens=response.prompt_tokens or (first.prompt_tokens if first else 0),
        completion_tokens=response.completion_tokens,
        visual_tokens=response.visual_tokens or (first.visual_tokens if first else 0),
    )


def is_final(result: grpcclient.InferResult) -> bool:
    parameters = result.get_response().parameters
    return "triton_final_response" in parameters and parameters["triton_final_response"].bool_param


class TritonClient:
    """Sends each generation to a Triton replica chosen by load, and retries it elsewhere before its first token.

    Created by `create_app` from the settings, started and closed by the app's lifespan.
    """

    def __init__(self, settings: Settings, metrics: FrontendMetrics) -> None:
        self.model_name = settings.model_name
        self._settings = settings
        self._metrics = metrics
        self.replicas = ReplicaSet(
            Targets.parse(settings.triton_grpc_url), settings.model_name, metrics, channel_args=CHANNEL_ARGS,
            ready_timeout_s=settings.ready_timeout_s, probe_interval_s=settings.triton_probe_interval_s,
            resolve_interval_s=settings.triton_resolve_interval_s, metrics_port=settings.triton_metrics_port,
        )

    async def start(self) -> None:
        await self.replicas.start()

    async def close(self) -> None:
        await self.replicas.close()

    async def is_ready(self) -> tuple[bool, str]:
        """(ready, reason): at least one replica reachable with the model ready, as last probed."""
        return self.replicas.readiness()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Yield the model's responses until the last; raise a FrontendError on failure.

        A request that has produced nothing yet and meets an unavailable or full replica goes to
        another one at once. Once every replica was tried it raises `UpstreamOverloaded` if one was
        full, and otherwise waits and tries them all again, within FRONTEND_UNAVAILABLE_RETRY_S
        (a restart, a scale-up from zero, the drain of the only replica).
        """
        settings = self._settings
        inputs = to_triton_inputs(request)
        give_up_at = time.monotonic() + settings.unavailable_retry_s
        backoff = settings.retry_initial_backoff_s
        tried: set[str] = set()
        busy: UpstreamOverloaded | None = None
        failed: FrontendError = UpstreamUnavailable(self.replicas.readiness()[1])
        while True:
            replica = self.replicas.pick(avoid=tried)
            if replica is None:
                if busy is not None:
                    raise busy
                if time.monotonic() + backoff > give_up_at:
                    raise failed
                log.warning("no Triton replica available (%s); retrying in %.2f s", failed.message, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, settings.retry_max_backoff_s)
                tried.clear()
                continue
            tried.add(replica.address)
            outcome, started = "cancelled", False
            try:
                with self.replicas.streaming(replica):
                    async for chunk in _stream(replica.client, self.model_name, inputs, request.request_id,
                                               settings.request_timeout_s):
                        started = True
                        if chunk.finish_reason is not None:
                            outcome = "ok"
                        yield chunk
                return
            except (UpstreamUnavailable, UpstreamOverloaded) as error:
                outcome = self._count(error)
                if started:
                    raise
                failed = error
                if isinstance(error, UpstreamOverloaded):
                    busy = error
            except FrontendError as error:
                outcome = self._count(error)
                raise
            finally:
                self._metrics.upstream_requests.labels(replica=replica.address, outcome=outcome).inc()

    def _count(self, error: FrontendError) -> str:
        kind = spec_for(error).upstream_kind or "internal"
        self._metrics.upstream_errors.labels(kind=kind).inc()
        return kind


async def _stream(client: grpcclient_aio.InferenceServerClient, model_name: str, inputs: list[grpcclient.InferInput],
                  request_id: str, timeout_s: float) -> AsyncIterator[GenerationChunk]:
    """One generation on one replica: its own bidirectional stream, cancelled if left early."""

    async def one_request() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": model_name, "inputs": inputs, "request_id": request_id}

    try:
        responses = client.stream_infer(one_request(), stream_timeout=timeout_s)
    except InferenceServerException as exc:
        raise _classify(exc) from None
    received = 0
    first: GenerationChunk | None = None
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
            chunk = chunk_from_result(result, first)
            first = first or chunk
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
