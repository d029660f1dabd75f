"""circuit_breaker and invalidate_cache: one configured HTTP call to the model's service."""

from __future__ import annotations

from typing import Any

from watchkeeper.remediation.actions.kind import ActionContext, ActionKind, declared


def http_endpoint(inputs: dict[str, Any], _plan: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    response = context.call(inputs["method"], inputs["url"], inputs["body"] or None, inputs)
    return {"status_code": response.status_code}


ACTIONS = {
    "circuit_breaker": ActionKind(http_endpoint, idempotent=declared),
    "invalidate_cache": ActionKind(http_endpoint, idempotent=declared),
}
