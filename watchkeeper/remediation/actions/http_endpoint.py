"""circuit_breaker and invalidate_cache: one configured HTTP call to the model's service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watchkeeper.config import HttpAction
from watchkeeper.remediation.actions.kind import ActionContext, ActionKind, declared
from watchkeeper.remediation.templates import allowed_url, render, secret_reference


def prepare(spec: HttpAction, context: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """The endpoint's URL filled in (only to an allowed host), its method and body."""
    hosts = spec.hosts_for(spec.url)
    url = allowed_url(spec.url, context, hosts)
    inputs = {
        "url": url,
        "allowed_hosts": hosts,
        "method": spec.method,
        "body": render(spec.body, context),
    }
    return url, inputs | {"idempotent": spec.idempotent, "secret": secret_reference(spec.secret)}


def http_endpoint(inputs: dict[str, Any], _plan: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    response = context.call(inputs["method"], inputs["url"], inputs["body"] or None, inputs)
    return {"status_code": response.status_code}


ACTIONS = {
    "circuit_breaker": ActionKind(prepare, http_endpoint, idempotent=declared),
    "invalidate_cache": ActionKind(prepare, http_endpoint, idempotent=declared),
}
