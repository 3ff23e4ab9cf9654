"""The Gradio chat UI. It builds OpenAI requests and runs them through the same ChatService as `/v1`,
so image and video caps, limits and error mapping are identical; API keys guard it through Gradio's login."""

from __future__ import annotations

import asyncio
import base64
import logging
import mimetypes
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import gradio as gr
from pydantic import ValidationError

from frontend.chat import ChatService
from frontend.errors import FrontendError, InternalError, InvalidRequest, ui_message
from frontend.generation import GenerationChunk
from frontend.metrics import UI_ROUTE
from frontend.schemas import ChatCompletionRequest

log = logging.getLogger(__name__)

Turn = dict[str, Any]
ChatMessages = list[dict[str, Any]]

# A browser re-renders the whole answer's markdown on every update: one update per token makes long
# answers quadratic and starves the page. Tokens that arrive within this interval are sent together.
UI_UPDATE_INTERVAL_S = 0.05
# What the prompt box takes: any image Gradio knows, and the video containers browsers play.
UPLOAD_TYPES = ["image", ".mp4", ".webm", ".mov"]


def _part(path: str) -> dict[str, Any]:
    """An attached file as an OpenAI content part: a video_url for a video, an image_url otherwise."""
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    kind = "video" if mime.startswith("video/") else "image"
    url = f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode('ascii')}"
    return {"type": f"{kind}_url", f"{kind}_url": {"url": url}}


def build_request(
    turns: list[Turn], *, model: str, system_prompt: str, max_tokens: int, temperature: float, top_p: float
) -> ChatCompletionRequest:
    """The conversation as an OpenAI request with images and videos inlined as data: URLs."""
    messages: list[dict[str, Any]] = []
    if system_prompt.strip():
        messages.append({"role": "system", "content": system_prompt.strip()})
    for turn in turns:
        if turn["role"] == "assistant":
            messages.append({"role": "assistant", "content": turn["text"]})
            continue
        parts: list[dict[str, Any]] = [_part(path) for path in turn["files"]]
        if turn["text"]:
            parts.append({"type": "text", "text": turn["text"]})
        messages.append({"role": "user", "content": parts})
    try:
        return ChatCompletionRequest.model_validate({
            "model": model,
            "messages": messages,
            "max_tokens": int(max_tokens),
            "temperature": float(temperature),
            "top_p": float(top_p),
            "stream": True,
        })
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidRequest(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def format_stats(ttft_s: float | None, elapsed_s: float, last: GenerationChunk | None, *, stopped: bool) -> str:
    if last is None:
        return "Stopped before the first token." if stopped else ""
    decode_s = elapsed_s - (ttft_s or 0.0)
    rate = (last.completion_tokens - 1) / decode_s if decode_s > 0 and last.completion_tokens > 1 else 0.0
    ttft = f"{ttft_s:.2f} s" if ttft_s is not None else "n/a"
    used = last.prompt_tokens + last.completion_tokens
    head = "Stopped. " if stopped else ""
    visual = f" · Visual tokens: **{last.visual_tokens}** (images and video)" if last.visual_tokens else ""
    return (
        f"{head}Time to first token: **{ttft}** · Speed: **{rate:.1f} tokens/s** · "
        f"Tokens used: **{used}** ({last.prompt_tokens} prompt + {last.completion_tokens} generated){visual}"
    )


class StopSignals:
    """Per-browser-session Stop flags. Stop ends the generation from inside `respond`, so the gRPC
    stream is cancelled whatever state Gradio's own task cancellation finds the generator in, and
    the partial answer still gets its stats."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def arm(self, session: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events[session] = event
        return event

    def fire(self, session: str) -> None:
        event = self._events.get(session)
        if event is not None:
            event.set()

    def disarm(self, session: str, event: asyncio.Event) -> None:
        if self._events.get(session) is event:
            del self._events[session]


async def until_stopped(
    chunks: AsyncIterator[GenerationChunk], stop: asyncio.Event
) -> AsyncIterator[GenerationChunk]:
    """Chunks until the end or Stop; Stop cancels the pending read, which cancels the Triton stream."""
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            reader = asyncio.ensure_future(anext(chunks, None))
            try:
                await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not reader.done():
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
            if reader.cancelled():
                return
            chunk = reader.result()
            if chunk is None:
                return
            yield chunk
    finally:
        stopper.cancel()


def theme() -> gr.themes.Base:
    """System fonts only: the default theme fetches Google Fonts, which air-gapped clusters cannot reach."""
    return gr.themes.Soft(
        primary_hue="indigo",
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )


def build_ui(service: ChatService) -> gr.Blocks:
    settings = service.settings

    def add_user_turn(box: dict[str, Any] | None, turns: list[Turn], chat: ChatMessages):
        box = box or {}
        text = (box.get("text") or "").strip()
        files = [f if isinstance(f, str) else f.get("path") for f in box.get("files") or []]
        files = [f for f in files if f]
        if not text and not files:
            return gr.update(), turns, chat, gr.update()
        turns = [*turns, {"role": "user", "text": text, "files": files}]
        content: list[Any] = [{"path": path} for path in files]
        if text:
            content.append(text)
        chat = [*chat, {"role": "user", "content": content}]
        return gr.update(value=None), turns, chat, ""

    stops = StopSignals()

    async def respond(
        turns: list[Turn],
        chat: ChatMessages,
        system_prompt: str,
        max_tokens: float,
        temperature: float,
        top_p: float,
        request: gr.Request,
    ) -> AsyncIterator[tuple[ChatMessages, list[Turn], str]]:
        if not turns or turns[-1]["role"] != "user":
            yield chat, turns, gr.update()
            return
        session = request.session_hash or ""
        stop = stops.arm(session)
        started = time.perf_counter()
        ttft: float | None = None
        last: GenerationChunk | None = None
        text = ""
        shown_at = 0.0
        yield chat, turns, "Waiting for the first token…"
        try:
            body = build_request(
                turns, model=settings.served_model_name, system_prompt=system_prompt or "",
                max_tokens=int(max_tokens), temperature=temperature, top_p=top_p,
            )
            generation = await service.prepare(body)
            async with (
                aclosing(service.generate(generation, route=UI_ROUTE)) as chunks,
                aclosing(until_stopped(chunks, stop)) as until_stop,
            ):
                async for chunk in until_stop:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    last = chunk
                    text += chunk.text
                    if time.perf_counter() - shown_at >= UI_UPDATE_INTERVAL_S:
                        shown_at = time.perf_counter()
                        answer = {"role": "assistant", "content": text}
                        yield [*chat, answer], [*turns, {"role": "assistant", "text": text}], "Generating…"
        except Exception as exc:  # every failure ends as a chat message, never a stack trace or a spinner
            error = exc if isinstance(exc, FrontendError) else InternalError("the frontend failed; see its log")
            if not isinstance(exc, FrontendError):
                log.exception("UI generation failed", exc_info=exc)
            error_message = {"role": "assistant", "content": ui_message(error)}
            if last is None:
                # The request never produced text: drop the turn so the conversation stays sendable.
                yield [*chat, error_message], turns[:-1], ""
            else:
                partial = {"role": "assistant", "content": text}
                yield [*chat, partial, error_message], [*turns, {"role": "assistant", "text": text}], ""
            return
        finally:
            stops.disarm(session, stop)
        stopped = stop.is_set()
        final = [*chat, {"role": "assistant", "content": text or ("(stopped)" if stopped else "(empty answer)")}]
        stats = format_stats(ttft, time.perf_counter() - started, last, stopped=stopped)
        yield final, [*turns, {"role": "assistant", "text": text}], stats

    def stop_generation(request: gr.Request) -> None:
        stops.fire(request.session_hash or "")

    def drop_last_answer(turns: list[Turn], chat: ChatMessages):
        while turns and turns[-1]["role"] == "assistant":
            turns = turns[:-1]
        while chat and chat[-1]["role"] == "assistant":
            chat = chat[:-1]
        return turns, chat, ""

    def clear(request: gr.Request):
        stops.fire(request.session_hash or "")
        return [], [], "", None

    with gr.Blocks(title="Qwen3-VL chat", analytics_enabled=False) as demo:
        gr.Markdown("## Qwen3-VL chat\nAsk about images and videos (MP4, WebM, MOV); answers stream as they are "
                    "generated.")
        turns_state = gr.State([])
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", height=540, elem_id="chatbot", buttons=["copy"])
                stats = gr.Markdown("", elem_id="stats", min_height=28)
                prompt = gr.MultimodalTextbox(
                    placeholder="Type a message, attach images or a video with the clip…",
                    file_types=UPLOAD_TYPES,
                    file_count="multiple",
                    sources=["upload"],
                    show_label=False,
                    elem_id="prompt",
                )
                with gr.Row():
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                    regenerate_button = gr.Button("Regenerate", elem_id="regenerate")
                    clear_button = gr.Button("Clear", elem_id="clear")
            with gr.Column(scale=1, min_width=260, elem_id="settings"):
                gr.Markdown("### Settings")
                system_prompt = gr.Textbox(label="System prompt", lines=3, elem_id="system-prompt")
                max_tokens = gr.Slider(
                    1, settings.max_tokens_limit, value=settings.default_max_tokens, step=1,
                    label="Max new tokens", elem_id="max-tokens",
                )
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature", elem_id="temperature")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p", elem_id="top-p")

        generation_inputs = [turns_state, chatbot, system_prompt, max_tokens, temperature, top_p]
        generation_outputs = [chatbot, turns_state, stats]

        submitted = prompt.submit(
            add_user_turn, [prompt, turns_state, chatbot], [prompt, turns_state, chatbot, stats], queue=False
        )
        answering = submitted.then(
            respond, generation_inputs, generation_outputs, concurrency_limit=None, show_progress="hidden"
        )

        regenerating = regenerate_button.click(
            drop_last_answer, [turns_state, chatbot], [turns_state, chatbot, stats], queue=False
        )
        reanswering = regenerating.then(
            respond, generation_inputs, generation_outputs, concurrency_limit=None, show_progress="hidden"
        )

        stop_button.click(stop_generation, None, None, queue=False)
        clear_button.click(
            clear, None, [chatbot, turns_state, stats, prompt], cancels=[answering, reanswering], queue=False
        )
    return demo
