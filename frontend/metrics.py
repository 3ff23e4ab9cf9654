"""Prometheus metrics of the frontend (names as in docs/contracts.md) and the middleware that feeds them."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# 2 s is the time-to-first-token objective (monitoring/objective.yml): the burn-rate rules read
# its bucket, and a unit test holds the two together.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30, 60, 120, 300)
UPSTREAM_KINDS = ("unavailable", "overloaded", "invalid_argument", "deadline", "cancelled", "internal")
UI_ROUTE = "ui"


class FrontendMetrics:
    """One registry per app, so two apps in one process never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "frontend_requests", "HTTP requests by route, method and status",
            ("route", "method", "status"), registry=self.registry,
        )
        self.in_flight = Gauge(
            "frontend_requests_in_flight", "HTTP requests being handled", ("route",), registry=self.registry
        )
        self.duration = Histogram(
            "frontend_request_duration_seconds", "Time from request to the last byte of the response",
            ("route",), buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "frontend_time_to_first_token_seconds", "Time from request to the first generated token",
            ("route",), buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.generated_tokens = Counter(
            "frontend_generated_tokens", "Tokens generated for callers", registry=self.registry
        )
        self.prompt_tokens = Counter("frontend_prompt_tokens", "Prompt tokens sent to the model", registry=self.registry)
        self.upstream_errors = Counter(
            "frontend_upstream_errors", "Errors reported by or about Triton, by kind", ("kind",), registry=self.registry
        )
        for kind in UPSTREAM_KINDS:
            self.upstream_errors.labels(kind=kind)
        # `replica` is a Triton replica's address (a pod IP in Kubernetes); its series go when it leaves.
        self.upstream_requests = Counter(
            "frontend_upstream_requests", "Generations sent to each Triton replica, by how they ended",
            ("replica", "outcome"), registry=self.registry,
        )
        self.upstream_in_flight = Gauge(
            "frontend_upstream_in_flight", "Streams this frontend has open on each Triton replica", ("replica",),
            registry=self.registry,
        )
        self.upstream_ready = Gauge(
            "frontend_upstream_replica_ready", "1 while a Triton replica takes new requests (0: starting, draining, down)",
            ("replica",), registry=self.registry,
        )

    def forget_replica(self, replica: str) -> None:
        for metric in (self.upstream_requests, self.upstream_in_flight, self.upstream_ready):
            metric.remove_by_labels({"replica": replica})


def route_label(path: str, api_paths: frozenset[str]) -> str:
    """A bounded label: the API path itself, `ui` for everything Gradio serves."""
    if path in api_paths:
        return path
    if path.startswith("/v1/"):
        return "unmatched"
    return UI_ROUTE


class MetricsMiddleware:
    """Counts every HTTP request once its response has been sent completely (streams included)."""

    def __init__(self, app: ASGIApp, *, metrics: FrontendMetrics, api_paths: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.api_paths = api_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_label(scope["path"], self.api_paths)
        method = scope["method"]
        status = 500
        started = time.perf_counter()
        self.metrics.in_flight.labels(route=route).inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.labels(route=route).dec()
            self.metrics.duration.labels(route=route).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route=route, method=method, status=str(status)).inc()
