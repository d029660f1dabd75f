"""Loopback stand-ins for what cannot run here, speaking the real protocols.

- `KubernetesStandIn`: the few apps/v1 and v1 endpoints the remediation actions call (a
  Deployment's scale subresource, a Deployment patch, a Service read and patch), reached by the
  official `kubernetes` client through a real kubeconfig; failures (status codes, delays) can be
  queued per request.
- `HttpRecorder`: Slack incoming webhooks, PagerDuty Events API v2, a Jira-compatible ticket API,
  a model router, a circuit breaker and a cache endpoint: it records every request and answers
  as the real service documents (PagerDuty 202 with a dedup_key, Jira 201 with an issue key).
- `SmtpStandIn`: a real SMTP server (aiosmtpd) collecting messages.
- `OtlpReceiver`: an OTLP/HTTP trace receiver decoding what the exporters send.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import free_port

TOKEN = "stand-in-token"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float


class _Server:
    """A threading HTTP server on a free loopback port whose handler calls `self.answer`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[Request] = []
        # Seconds to hold the answer back after the request took effect, by "METHOD /path" or "/path";
        # `on_request` is told of each request once it took effect (before that delay).
        self.delay: dict[str, float] = {}
        self.on_request: Callable[[Request], None] | None = None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = raw.decode(errors="replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Request(self.command, self.path, headers, body, time.monotonic())
                owner.requests.append(request)
                status, answer = owner.answer(request)
                if owner.on_request is not None:
                    owner.on_request(request)
                time.sleep(owner.delay.get(f"{self.command} {self.path}", owner.delay.get(self.path, 0)))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, request: Request) -> tuple[int, Any]:
        raise NotImplementedError

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Failure:
    status: int = 500
    delay: float = 0.0


class KubernetesStandIn(_Server):
    def __init__(
        self, deployments: dict[tuple[str, str], int], services: dict[tuple[str, str], dict]
    ) -> None:
        super().__init__()
        self.deployments = {key: {"replicas": r, "annotations": {}} for key, r in deployments.items()}
        self.services = {key: dict(selector) for key, selector in services.items()}
        self.failures: deque[Failure] = deque()
        self.lock = threading.Lock()

    def kubeconfig(self, folder: Path) -> Path:
        path = folder / "kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                    "users": [{"name": "watchkeeper", "user": {"token": TOKEN}}],
                    "contexts": [
                        {"name": "standin", "context": {"cluster": "standin", "user": "watchkeeper"}}
                    ],
                    "current-context": "standin",
                }
            )
        )
        return path

    def _deployment(self, namespace: str, name: str) -> dict:
        state = self.deployments[(namespace, name)]
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": state["replicas"],
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": dict(state["annotations"])},
                    "spec": {"containers": [{"name": name, "image": f"{name}:1"}]},
                },
            },
        }

    def _scale(self, namespace: str, name: str) -> dict:
        replicas = self.deployments[(namespace, name)]["replicas"]
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
            "status": {"replicas": replicas},
        }

    def _service(self, namespace: str, name: str) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": dict(self.services[(namespace, name)]), "ports": [{"port": 80}]},
        }

    def answer(self, request: Request) -> tuple[int, Any]:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, {"kind": "Status", "status": "Failure", "code": 401, "reason": "Unauthorized"}
        if self.failures:
            failure = self.failures.popleft()
            time.sleep(failure.delay)
            if failure.status:
                return failure.status, {"kind": "Status", "status": "Failure", "code": failure.status}
        parts = request.path.split("?")[0].strip("/").split("/")
        with self.lock:
            if parts[:3] == ["apis", "apps", "v1"] and parts[5] in {"deployments"}:
                namespace, name = parts[4], parts[6]
                if (namespace, name) not in self.deployments:
                    return 404, {"kind": "Status", "status": "Failure", "code": 404, "reason": "NotFound"}
                state = self.deployments[(namespace, name)]
                if parts[7:] == ["scale"]:
                    if request.method == "PATCH":
                        state["replicas"] = request.body["spec"]["replicas"]
                    return 200, self._scale(namespace, name)
                if request.method == "PATCH":
                    annotations = request.body["spec"]["template"]["metadata"]["annotations"]
                    state["annotations"].update(annotations)
                return 200, self._deployment(namespace, name)
            if parts[:2] == ["api", "v1"] and parts[4] == "services":
                namespace, name = parts[3], parts[5]
                if request.method == "PATCH":
                    self.services[(namespace, name)].update(request.body["spec"]["selector"])
                return 200, self._service(namespace, name)
        return 404, {"kind": "Status", "status": "Failure", "code": 404}


class HttpRecorder(_Server):
    """Answers like Slack, PagerDuty, a Jira-compatible API and plain JSON endpoints."""

    def __init__(self) -> None:
        super().__init__()
        self.tickets = 0
        self.statuses: dict[str, deque[int]] = {}

    def fail_next(self, path: str, *statuses: int) -> None:
        self.statuses.setdefault(path, deque()).extend(statuses)

    def to(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def answer(self, request: Request) -> tuple[int, Any]:
        queued = self.statuses.get(request.path)
        if queued:
            return queued.popleft(), {"error": "injected"}
        if request.path.startswith("/pagerduty"):
            return 202, {
                "status": "success",
                "message": "Event processed",
                "dedup_key": request.body["dedup_key"],
            }
        if request.path.endswith("/issue") and request.method == "POST":
            self.tickets += 1
            return 201, {"id": str(10000 + self.tickets), "key": f"MLOPS-{self.tickets}"}
        if request.path.startswith("/slack"):
            return 200, "ok"
        return 200, {"ok": True}


class SmtpStandIn:
    def __init__(self) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.handlers import Message

        self.messages: list[Any] = []
        owner = self

        class Collect(Message):
            def handle_message(self, message: Any) -> None:
                owner.messages.append(message)

        self.port = free_port()
        self.controller = Controller(Collect(), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> SmtpStandIn:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: int
    attributes: dict[str, Any]


class OtlpReceiver:
    """An OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf, gzip or not), as a collector or
    Jaeger's OTLP port takes them: each request decoded with opentelemetry-proto and its spans
    kept. No receiver installs from Debian or PyPI here; this speaks the protocol the exporters
    speak to one."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spans: list[ReceivedSpan] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404 if self.path != "/v1/traces" else 415)
                    self.end_headers()
                    return
                owner.spans.extend(decoded_spans(raw))
                data = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in list(self.spans) if s.trace_id == trace_id]

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def decoded_spans(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest.FromString(body)
    found = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name")),
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                    )
                )
    return found


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None
