"""`/v1/*`: OpenAI-compatible chat completions and model list."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from typing import TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from frontend.chat import ChatService
from frontend.deps import ChatServiceDep, require_api_key
from frontend.errors import FrontendError, InternalError, UpstreamCancelled, openai_body
from frontend.generation import GenerationChunk, GenerationRequest
from frontend.schemas import (
    AssistantReply,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
)

CHAT_ROUTE = "/v1/chat/completions"

_ERRORS = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Invalid request, or the model rejected it (message from Triton)"),
        (401, "Missing or invalid API key"),
        (404, "Unknown model"),
        (413, "Request body, an image or a video too large"),
        (429, "Triton's queue is full; see Retry-After"),
        (503, "Triton unreachable or the model not ready"),
        (504, "Deadline exceeded"),
    )
}

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS)

T = TypeVar("T")


def _usage(chunk: GenerationChunk | None) -> Usage:
    prompt = chunk.prompt_tokens if chunk else 0
    completion = chunk.completion_tokens if chunk else 0
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _sse(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode("utf-8")


async def _cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it (and so the Triton stream) if the client hangs up first."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise UpstreamCancelled("client disconnected") from None
        raise
    finally:
        watcher.cancel()


@router.get("/models", response_model=ModelList)
async def list_models(service: ChatServiceDep) -> ModelList:
    created = int(time.time())
    return ModelList(data=[ModelCard(id=model_id, created=created) for model_id in service.model_ids])


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"content": {"text/event-stream": {"description": "chat.completion.chunk events, then [DONE]"}}}},
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, service: ChatServiceDep
) -> ChatCompletion | StreamingResponse:
    generation = await service.prepare(body)
    created = int(time.time())
    if not body.stream:
        return await _cancel_on_disconnect(request, _whole_answer(service, generation, body.model, created))
    chunks = service.generate(generation, route=CHAT_ROUTE)
    try:
        # Waiting for the first token (queue, retries) also ends when the client hangs up.
        first = await _cancel_on_disconnect(request, anext(chunks))
    except BaseException:
        await chunks.aclose()
        raise
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        _event_stream(generation.request_id, body.model, created, first, chunks, include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _whole_answer(
    service: ChatService, generation: GenerationRequest, model: str, created: int
) -> ChatCompletion:
    parts: list[str] = []
    last: GenerationChunk | None = None
    async with aclosing(service.generate(generation, route=CHAT_ROUTE)) as chunks:
        async for chunk in chunks:
            parts.append(chunk.text)
            last = chunk
    return ChatCompletion(
        id=generation.request_id,
        created=created,
        model=model,
        choices=[Choice(message=AssistantReply(content="".join(parts)), finish_reason=last.finish_reason if last else "stop")],
        usage=_usage(last),
    )


async def _event_stream(
    request_id: str,
    model: str,
    created: int,
    first: GenerationChunk,
    chunks: AsyncIterator[GenerationChunk],
    include_usage: bool,
) -> AsyncIterator[bytes]:
    def event(delta: Delta, finish_reason: str | None = None, usage: Usage | None = None) -> bytes:
        chunk = ChatCompletionChunk(
            id=request_id,
            created=created,
            model=model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)],  # type: ignore[arg-type]
            usage=usage,
        )
        return _sse(chunk.model_dump_json(exclude_none=False))

    last = first
    try:
        yield event(Delta(role="assistant", content=""))
        current: GenerationChunk | None = first
        while current is not None:
            last = current
            if current.text:
                yield event(Delta(content=current.text))
            if current.finish_reason is not None:
                break
            current = await anext(chunks, None)
        yield event(Delta(), finish_reason=last.finish_reason or "stop", usage=_usage(last))
        if include_usage:
            usage_chunk = ChatCompletionChunk(id=request_id, created=created, model=model, choices=[], usage=_usage(last))
            yield _sse(usage_chunk.model_dump_json())
    except FrontendError as error:
        yield _sse(json.dumps(openai_body(error)))
    except Exception:  # a bug must still end the stream with a readable error, not a cut connection
        yield _sse(json.dumps(openai_body(InternalError("the frontend failed while streaming"))))
        raise
    finally:
        await chunks.aclose()
    yield _sse("[DONE]")
