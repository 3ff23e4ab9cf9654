"""FastAPI dependencies: the per-app objects that `create_app` puts on `app.state`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from frontend.chat import ChatService
from frontend.metrics import FrontendMetrics
from frontend.security import ApiKeys
from frontend.settings import Settings
from frontend.triton_client import TritonClient


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_chat_service(request: Request) -> ChatService:
    return request.app.state.chat


def get_triton(request: Request) -> TritonClient:
    return request.app.state.triton


def get_metrics(request: Request) -> FrontendMetrics:
    return request.app.state.metrics


def require_api_key(request: Request) -> None:
    keys: ApiKeys = request.app.state.api_keys
    keys.check_authorization_header(request.headers.get("authorization"))


SettingsDep = Annotated[Settings, Depends(get_settings)]
ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]
TritonDep = Annotated[TritonClient, Depends(get_triton)]
MetricsDep = Annotated[FrontendMetrics, Depends(get_metrics)]
