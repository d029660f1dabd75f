"""The service's own edge: requests by endpoint and status, their latency, and refusals by reason.

Counted in the process (each replica is its own scrape target, and Prometheus sums them), unlike
the store-backed metrics that every replica reports alike.
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The service logs what it refused or failed; uvicorn's access log, a line for every request, is off.
LOG = logging.getLogger("watchkeeper.service")
# What a 4xx says, as the `reason` label of rejected requests.
REASONS = {
    400: "undecodable_body",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_encoding",
    422: "invalid_value",
}
# Reasons a write endpoint gives, whose series exist from the start so a rate over them starts at 0.
WRITE_REASONS = ("undecodable_body", "unauthorized", "too_large", "unsupported_encoding", "invalid_value")
WRITE_ENDPOINTS = ("/v1/predictions", "/v1/feedback", "/v1/pipeline-runs", "/v1/alertmanager")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# What machines call many times a second: FastAPI records no span of its own for these. A receiver
# would get a trace per intake POST and scrape (about 20 a second at fifty models with
# the client's five-second tick, 100 with a one-second one), and each costs
# the service about 0.6 ms of CPU (docs/benchmarks.md); a notification's trace starts in its own
# handler (`watchkeeper/tracing.py`).
UNTRACED = frozenset(
    {*WRITE_ENDPOINTS, "/v1/feature-lookups", "/healthz", "/metrics", "/metrics/store", "/metrics/process"}
)


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        disable_created_metrics()  # `_created` series double the exposition and no rule reads them
        self.requests = Counter(
            "watchkeeper_http_requests",
            "HTTP requests answered, by endpoint (route template), method and status code.",
            ["endpoint", "method", "code"],
            registry=registry,
        )
        self.rejected = Counter(
            "watchkeeper_http_requests_rejected",
            "Requests refused with a 4xx, by endpoint and reason.",
            ["endpoint", "reason"],
            registry=registry,
        )
        self.latency = Histogram(
            "watchkeeper_http_request_duration_seconds",
            "Time to answer a request, by endpoint and method.",
            ["endpoint", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.alerts_rejected = Counter(
            "watchkeeper_alerts_rejected",
            "Malformed alerts set aside from notifications whose other alerts were stored.",
            registry=registry,
        )
        for endpoint in WRITE_ENDPOINTS:
            self.requests.labels(endpoint, "POST", "200")
            for reason in WRITE_REASONS:
                self.rejected.labels(endpoint, reason)

    def install(self, app: FastAPI) -> None:
        app.add_middleware(MeasuredRequests, edge=self)

    def answered(self, scope: Scope, status_code: int, seconds: float) -> None:
        endpoint, method = route_template(scope), scope["method"]
        self.latency.labels(endpoint, method).observe(seconds)
        self.requests.labels(endpoint, method, str(status_code)).inc()
        if 400 <= status_code < 500:
            self.rejected.labels(endpoint, REASONS.get(status_code, str(status_code))).inc()
        if status_code >= 400:
            LOG.warning("%s %s answered %d", method, endpoint, status_code)


class MeasuredRequests:
    """Counts and times every HTTP request as plain ASGI: Starlette's `BaseHTTPMiddleware` costs a
    task group and a stream per request, on each of hundreds of intake POSTs a second at fifty
    models. A request the app fails with an exception counts as 500."""

    def __init__(self, app: ASGIApp, edge: EdgeMetrics) -> None:
        self.app, self.edge = app, edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status_code = time.perf_counter(), 500

        async def send_and_note(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.edge.answered(scope, status_code, time.perf_counter() - started)


def untraced(scope: Scope) -> bool:
    """FastAPI's telemetry skips the request (`UNTRACED`)."""
    return scope.get("path") in UNTRACED


def route_template(scope: Scope) -> str:
    """The route the router matched (`/v1/incidents/{incident_id}`), never the raw path, so the
    label's values stay few; `other` for paths no route serves."""
    return getattr(scope.get("route"), "path", "other")
