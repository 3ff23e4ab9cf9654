"""Frontend configuration, read once from the environment by `create_app`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from frontend.discovery import Targets

CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every knob of the frontend; env var = `FRONTEND_` + field name in upper case."""

    model_config = SettingsConfigDict(env_prefix="FRONTEND_", extra="ignore", frozen=True)

    # host:port[,host:port...] or dns:///name:port (frontend/discovery.py); one channel per replica.
    triton_grpc_url: str = "127.0.0.1:8001"
    triton_resolve_interval_s: float = Field(5.0, gt=0)
    triton_probe_interval_s: float = Field(1.0, gt=0)
    triton_metrics_port: int = Field(8002, ge=0, le=65535)
    model_name: str = "qwen3_vl"
    served_model_name: str = "qwen3-vl"

    request_timeout_s: float = Field(300.0, gt=0)
    ready_timeout_s: float = Field(2.0, gt=0)
    unavailable_retry_s: float = Field(20.0, ge=0)
    retry_initial_backoff_s: float = Field(0.25, gt=0)
    retry_max_backoff_s: float = Field(2.0, gt=0)
    overloaded_retry_after_s: int = Field(1, ge=1)

    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_image_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(16_777_216, gt=0)
    max_images_per_request: int = Field(4, ge=0)
    # Checked here without decoding (the byte cap, the container); every other video limit is the model's.
    # The body cap applies first: a video's data: URL is 4/3 of its size.
    max_video_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_videos_per_request: int = Field(2, ge=0)
    max_tokens_limit: int = Field(2048, ge=1)
    # The model's max_prompt_tokens: text that cannot fit it is refused before it is sent
    # (wire_contract/text_budget.py). Set it to the served config's value (the overlays do).
    max_prompt_tokens: int = Field(2048, ge=1)
    default_max_tokens: int = Field(256, ge=1)

    api_keys: CommaList = []
    api_keys_file: Path | None = None
    cors_origins: CommaList = []

    allow_remote_images: bool = False
    remote_image_hosts: CommaList = []
    remote_image_timeout_s: float = Field(5.0, gt=0)

    ui_enabled: bool = True

    @field_validator("triton_grpc_url")
    @classmethod
    def _check_targets(cls, value: str) -> str:
        Targets.parse(value)
        return value

    @field_validator("api_keys", "cors_origins", "remote_image_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"FRONTEND_DEFAULT_MAX_TOKENS ({self.default_max_tokens}) exceeds "
                f"FRONTEND_MAX_TOKENS_LIMIT ({self.max_tokens_limit})"
            )
        if self.max_image_bytes > self.max_body_bytes:
            raise ValueError("FRONTEND_MAX_IMAGE_BYTES must not exceed FRONTEND_MAX_BODY_BYTES")
        if self.allow_remote_images and not self.remote_image_hosts:
            raise ValueError(
                "FRONTEND_ALLOW_REMOTE_IMAGES=true needs FRONTEND_REMOTE_IMAGE_HOSTS (an allow-list)"
            )
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"FRONTEND_API_KEYS_FILE {self.api_keys_file} is not a readable file")
        return self

    def all_api_keys(self) -> frozenset[str]:
        """Keys from the env var plus one per non-empty, non-comment line of the key file."""
        keys = set(self.api_keys)
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.add(line)
        return frozenset(keys)
