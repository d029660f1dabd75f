"""fallback_model: traffic to the stable model, by a Service's selector or a routing endpoint;
back to the model when the incident resolves, if the playbook says so."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watchkeeper.config import FallbackAction
from watchkeeper.remediation.actions.kind import ActionContext, ActionKind, declared
from watchkeeper.remediation.templates import (
    KUBERNETES_LABEL_VALUE,
    MissingPlaceholder,
    UnsafeTarget,
    allowed_url,
    render,
    secret_reference,
)


def prepare(spec: FallbackAction, context: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """The alert's model and its configured stable model, by Service selector or routing endpoint."""
    model = context.get("model_name")
    if model is None:
        raise MissingPlaceholder("model_name")
    stable = spec.stable_models.get(model)
    if stable is None:
        raise LookupError(f"no stable model is configured for {model!r}")
    context = {**context, "stable_model": stable}
    hosts = spec.hosts_for(spec.url)
    inputs = {
        "model": model,
        "stable_model": stable,
        "via": spec.via,
        "url": allowed_url(spec.url, context, hosts) if spec.url else None,
        "allowed_hosts": hosts if spec.url else None,
        "body": render(spec.body, context),
        "namespace": spec.namespace,
        "service": spec.service,
        "selector_label": spec.selector_label,
        "revert_on_resolve": spec.revert_on_resolve,
        "idempotent": spec.idempotent,
        "secret": secret_reference(spec.secret),
    }
    if spec.via == "service" and not KUBERNETES_LABEL_VALUE.match(stable):
        raise UnsafeTarget(f"{stable!r} is not a valid Kubernetes label value")
    return f"model/{model}", inputs


def _point_service(inputs: dict[str, Any], context: ActionContext, model: str) -> dict[str, Any]:
    from kubernetes import client

    core = client.CoreV1Api(context.kubernetes)
    service, namespace, label = inputs["service"], inputs["namespace"], inputs["selector_label"]
    current = core.read_namespaced_service(service, namespace, _request_timeout=context.timeout)
    previous = (current.spec.selector or {}).get(label)
    core.patch_namespaced_service(
        service, namespace, {"spec": {"selector": {label: model}}}, _request_timeout=context.timeout
    )
    return {"service": service, "previous_selector": previous, "selector": model}


def fallback_model(inputs: dict[str, Any], _plan: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    if inputs["via"] == "service":
        return _point_service(inputs, context, inputs["stable_model"])
    response = context.call("POST", inputs["url"], {**inputs["body"], "active": True}, inputs)
    return {"status_code": response.status_code, "routed_to": inputs["stable_model"]}


def revert_fallback(inputs: dict[str, Any], result: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    if not inputs.get("revert_on_resolve"):
        return {"reverted": False, "note": "the playbook keeps the stable model"}
    if inputs["via"] == "service":
        return _point_service(inputs, context, result.get("previous_selector") or inputs["model"])
    response = context.call("POST", inputs["url"], {**inputs["body"], "active": False}, inputs)
    return {"status_code": response.status_code, "routed_to": inputs["model"]}


ACTIONS = {"fallback_model": ActionKind(prepare, fallback_model, revert=revert_fallback, idempotent=declared)}
