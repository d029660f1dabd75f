"""Outgoing HTTP: a call refused before it is sent when its host is not allowed, one verifying TLS
context, and a failure that says what answered."""

from __future__ import annotations

import functools
import ssl
from typing import Any
from urllib.parse import urlsplit

import httpx
from opentelemetry.trace import SpanKind, Status, StatusCode

from watchkeeper.tracing import tracer, with_trace_headers


class CallFailed(RuntimeError):
    """The target did not do what was asked; a retry may help."""


class CallRefused(CallFailed):
    """The call must not be sent at all (a host outside its allowed hosts); retrying cannot help."""


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def refused_host(url: str, allowed_hosts: list[str] | None) -> str | None:
    """Why `url` may not be called, or None: its host must be one the configuration allows."""
    if allowed_hosts is None:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https"):
        return f"{url!r} is not an http(s) URL"
    if host not in allowed_hosts:
        return f"host {host!r} is not among the action's allowed hosts ({', '.join(allowed_hosts)})"
    return None


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every outgoing call: httpx would build one per request, and
    loading the CA bundle takes about 35 ms of CPU each time."""
    return httpx.create_ssl_context()


def request(
    method: str,
    url: str,
    body: Any,
    timeout: float,
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
    shown_as: str | None = None,
) -> httpx.Response:
    """`method` `url` with a JSON body; raises CallRefused before sending to a host not allowed,
    CallFailed on an answer of 400 or more. A URL that is itself a secret (a Slack webhook) is named
    in errors by `shown_as` instead."""
    refusal = refused_host(url, allowed_hosts)
    if refusal is not None:
        raise CallRefused(f"not sent: {refusal}")
    # The span names the host only: a URL can be a secret (a Slack webhook's path).
    host = urlsplit(url).hostname or ""
    with tracer().start_as_current_span(f"{method} {host}", kind=SpanKind.CLIENT) as span:
        span.set_attributes({"http.request.method": method, "server.address": host})
        response = httpx.request(
            method,
            url,
            json=body,
            headers=with_trace_headers(bearer(token)),
            timeout=timeout,
            verify=tls_context(),
        )
        span.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 400:
            span.set_status(Status(StatusCode.ERROR))
            raise CallFailed(
                f"{method} {shown_as or url} answered {response.status_code}: {response.text[:200]}"
            )
    return response
