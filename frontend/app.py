"""`create_app`: the one place that reads settings and wires the service together.

Start it with `uvicorn --factory frontend.app:create_app`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import disable_created_metrics
from starlette.exceptions import HTTPException as StarletteHTTPException

from frontend.chat import ChatService
from frontend.errors import (
    FrontendError,
    InternalError,
    InvalidRequest,
    http_headers,
    openai_body,
    spec_for,
)
from frontend.metrics import FrontendMetrics, MetricsMiddleware
from frontend.routes import health, openai
from frontend.security import ApiKeys, BodySizeLimitMiddleware
from frontend.settings import Settings
from frontend.triton_client import TritonClient

log = logging.getLogger(__name__)


def _error_response(error: FrontendError, settings: Settings) -> JSONResponse:
    return JSONResponse(
        openai_body(error),
        status_code=spec_for(error).status,
        headers=http_headers(error, settings.overloaded_retry_after_s),
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return message, param


def _install_error_handlers(app: FastAPI, settings: Settings) -> None:
    @app.exception_handler(FrontendError)
    async def frontend_error(_: Request, exc: FrontendError) -> JSONResponse:
        return _error_response(exc, settings)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error_response(InvalidRequest(message, param=param), settings)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {"error": {"message": str(exc.detail), "type": "invalid_request_error", "param": None, "code": None}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _error_response(InternalError("internal error in the frontend"), settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings come from the environment unless given (tests)."""
    settings = settings or Settings()
    disable_created_metrics()  # the `*_created` series double the output and no rule reads them
    metrics = FrontendMetrics()
    triton = TritonClient(settings, metrics)
    api_keys = ApiKeys(settings.all_api_keys())
    chat = ChatService(settings, triton, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await triton.start()
        try:
            yield
        finally:
            await triton.close()

    app = FastAPI(
        title="Qwen3-VL frontend",
        version="0.1.0",
        summary="OpenAI-compatible chat completions and a web chat for Qwen3-VL served by Triton",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.triton = triton
    app.state.api_keys = api_keys
    app.state.chat = chat
    _install_error_handlers(app, settings)
    app.include_router(health.router)
    app.include_router(openai.router)

    # Always installed, with no origins unless configured: Gradio adds its own permissive CORS
    # handling to the parent app unless the parent has a CORSMiddleware of its own.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["authorization", "content-type"],
    )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    api_paths = frozenset(route.path for router in (health.router, openai.router) for route in router.routes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, api_paths=api_paths)

    if settings.ui_enabled:
        import gradio as gr

        from frontend.ui import build_ui, theme

        auth = (lambda _user, password: api_keys.is_valid(password)) if api_keys.enabled else None
        gr.mount_gradio_app(
            app,
            build_ui(chat),
            path="",
            auth=auth,
            auth_message="Sign in with any user name and one of this server's API keys as the password.",
            max_file_size=settings.max_body_bytes,
            ssr_mode=False,
            footer_links=[],
            show_error=False,
            theme=theme(),
        )
    return app
