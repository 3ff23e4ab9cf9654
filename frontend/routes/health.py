"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from frontend.deps import MetricsDep, TritonDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    reason: str | None = None


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health, "description": "Triton or the model not ready"}})
async def readyz(triton: TritonDep) -> Health | JSONResponse:
    ready, reason = await triton.is_ready()
    if ready:
        return Health(status="ready")
    return JSONResponse(Health(status="not ready", reason=reason).model_dump(), status_code=503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
