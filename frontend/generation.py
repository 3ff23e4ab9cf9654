"""The frontend's own request/response types for one generation on Triton.

The service layer speaks these; `triton_client` alone turns them into tensors and back.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class GenerationParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_tokens: int = Field(ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = True


class GenerationRequest(BaseModel):
    """Turns in the Triton `messages` JSON shape; image parts index into `images`."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    messages: list[dict[str, Any]]
    images: list[bytes] = []
    params: GenerationParams


class GenerationChunk(BaseModel):
    """One response of the stream: new text, and counters so far."""

    text: str
    finish_reason: Literal["stop", "length", "cancelled"] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
