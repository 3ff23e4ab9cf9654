"""The chat service: OpenAI request → checked GenerationRequest → streamed chunks, shared by API and UI."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

from frontend.errors import ERROR_TABLE, InvalidRequest, ModelNotFound, UpstreamCancelled
from frontend.generation import GenerationChunk, GenerationParams, GenerationRequest
from frontend.images import CheckedImages, ImageLimits
from frontend.media import decode_data_url, fetch_remote
from frontend.metrics import FrontendMetrics
from frontend.schemas import AssistantMessage, ChatCompletionRequest, ImagePart, SystemMessage, TextPart, VideoPart
from frontend.settings import Settings
from frontend.triton_client import TritonClient
from frontend.videos import VideoLimits, check_video
from wire_contract.text_budget import over_budget


def _join_text(content: str | list[TextPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def _texts(body: ChatCompletionRequest) -> Iterator[str]:
    for message in body.messages:
        if isinstance(message.content, str):
            yield message.content
        elif message.content is not None:
            yield from (part.text for part in message.content if isinstance(part, TextPart))


class ChatService:
    def __init__(self, settings: Settings, triton: TritonClient, metrics: FrontendMetrics) -> None:
        self.settings = settings
        self.triton = triton
        self.metrics = metrics
        self.limits = {"image": ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels),
                       "video": VideoLimits(max_bytes=settings.max_video_bytes)}
        self.checked_images = CheckedImages(self.limits["image"])

    @property
    def model_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.settings.served_model_name, self.settings.model_name)))

    async def prepare(self, body: ChatCompletionRequest) -> GenerationRequest:
        """Validate limits and check every image and video; nothing reaches Triton unless this passes."""
        oversized = over_budget(_texts(body), self.settings.max_prompt_tokens)
        if oversized:
            raise InvalidRequest(oversized, param="messages")
        if body.model not in self.model_ids:
            raise ModelNotFound(
                f"model {body.model!r} is not served here; use {self.settings.served_model_name!r}", param="model"
            )
        max_tokens = body.requested_max_tokens() or self.settings.default_max_tokens
        if max_tokens > self.settings.max_tokens_limit:
            raise InvalidRequest(
                f"max_tokens is {max_tokens}; the limit is {self.settings.max_tokens_limit}", param="max_tokens"
            )
        parts = [part for message in body.messages if not isinstance(message.content, str | None)
                 for part in message.content]
        for kind, cls, limit in (("images", ImagePart, self.settings.max_images_per_request),
                                 ("videos", VideoPart, self.settings.max_videos_per_request)):
            count = sum(isinstance(part, cls) for part in parts)
            if count > limit:
                raise InvalidRequest(f"{count} {kind} in the request; the limit is {limit}", param="messages")
        media: dict[str, list[bytes]] = {"image": [], "video": []}
        turns: list[dict[str, Any]] = []
        for index, message in enumerate(body.messages):
            if isinstance(message, SystemMessage):
                turns.append({"role": "system", "content": _join_text(message.content)})
            elif isinstance(message, AssistantMessage):
                turns.append({"role": "assistant", "content": _join_text(message.content)})
            elif isinstance(message.content, str):
                turns.append({"role": "user", "content": message.content})
            else:
                content: list[dict[str, Any]] = []
                for part_index, part in enumerate(message.content):
                    if isinstance(part, TextPart):
                        content.append({"type": "text", "text": part.text})
                        continue
                    kind = "image" if isinstance(part, ImagePart) else "video"
                    url = part.image_url.url if isinstance(part, ImagePart) else part.video_url.url
                    param = f"messages[{index}].content[{part_index}].{kind}_url"
                    media[kind].append(await self._load(url, kind, param=param))
                    content.append({"type": kind, kind: len(media[kind]) - 1})
                turns.append({"role": "user", "content": content})
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=body.temperature if body.temperature is not None else 0.0,
            top_p=body.top_p if body.top_p is not None else 1.0,
            seed=body.seed,
            stop=tuple(body.stop_list()),
            stream=body.stream,
        )
        return GenerationRequest(request_id=f"chatcmpl-{uuid.uuid4().hex}", messages=turns, images=media["image"],
                                 videos=media["video"], params=params)

    async def _load(self, url: str, kind: str, *, param: str) -> bytes:
        """An image's or a video's bytes, checked as far as the frontend can without decoding a video."""
        limits = self.limits[kind]
        if url.startswith("data:"):
            data = decode_data_url(url, limits, param=param)
        elif url.startswith(("http://", "https://")):
            if not self.settings.allow_remote_images:
                raise InvalidRequest(
                    f"remote {kind} URLs are disabled on this server; send the {kind} as a data: URL", param=param
                )
            data = await fetch_remote(
                url,
                limits,
                allowed_hosts=self.settings.remote_image_hosts,
                timeout_s=self.settings.remote_image_timeout_s,
                param=param,
            )
        else:
            raise InvalidRequest(f"{kind}_url must be a data: URL", param=param)
        if kind == "video":
            return check_video(data, limits, param=param)
        checked = await asyncio.to_thread(self.checked_images.check, data, param=param)
        return checked.data

    async def generate(self, request: GenerationRequest, *, route: str) -> AsyncIterator[GenerationChunk]:
        """Stream the answer (TritonClient picks the replica and retries); count what the caller got."""
        started = time.perf_counter()
        last: GenerationChunk | None = None
        try:
            async with aclosing(self.triton.generate(request)) as chunks:
                async for chunk in chunks:
                    if last is None:
                        self.metrics.time_to_first_token.labels(route=route).observe(time.perf_counter() - started)
                    last = chunk
                    yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            if last is None or last.finish_reason is None:
                self.metrics.upstream_errors.labels(kind=ERROR_TABLE[UpstreamCancelled].upstream_kind).inc()
            raise
        finally:
            if last is not None:
                self.metrics.prompt_tokens.inc(last.prompt_tokens)
                self.metrics.generated_tokens.inc(last.completion_tokens)
