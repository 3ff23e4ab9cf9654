"""The frontend's own request/response types for one generation on Triton.

The service layer speaks these; `triton_client` alone turns them into tensors and back.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from wire_contract import DEFAULT_STREAM, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, MAX_TEMPERATURE, FinishReason


class GenerationParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_tokens: int = Field(ge=1)
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0, le=MAX_TEMPERATURE)
    top_p: float = Field(DEFAULT_TOP_P, gt=0, le=1)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = DEFAULT_STREAM


class GenerationRequest(BaseModel):
    """Turns in the Triton `messages` JSON shape; image parts index into `images`, video parts into `videos`."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    messages: list[dict[str, Any]]
    images: list[bytes] = []
    videos: list[bytes] = []
    params: GenerationParams


class GenerationChunk(BaseModel):
    """One response of the stream: new text, and counters so far."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    visual_tokens: int = 0  # of the prompt tokens, those standing for images and video frames
