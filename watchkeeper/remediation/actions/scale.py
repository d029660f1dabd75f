"""scale: a Deployment's replicas by a step or a factor, within the playbook's bounds."""

from __future__ import annotations

import math
from typing import Any

from watchkeeper.remediation.actions.kind import ActionContext, ActionKind, always
from watchkeeper.remediation.templates import prepare_deployment


def plan_scale(inputs: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    from kubernetes import client

    apps = client.AppsV1Api(context.kubernetes)
    current = apps.read_namespaced_deployment_scale(
        inputs["deployment"], inputs["namespace"], _request_timeout=context.timeout
    ).spec.replicas
    current = current or 0
    wanted = math.ceil(current * inputs["factor"]) if inputs.get("factor") else current + inputs["step"]
    desired = max(inputs["min_replicas"], min(inputs["max_replicas"], wanted))
    return {
        "replicas_before": current,
        "replicas": desired,
        "bound": "ceiling" if wanted > current else "floor",
    }


def scale(inputs: dict[str, Any], plan: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    """Set the replicas the plan computed: sending it twice leaves the same count as once."""
    from kubernetes import client

    current, desired = plan["replicas_before"], plan["replicas"]
    if desired == current:
        return {
            "changed": False,
            "replicas": current,
            "note": f"already at the {plan['bound']} of {desired} replicas",
        }
    client.AppsV1Api(context.kubernetes).patch_namespaced_deployment_scale(
        inputs["deployment"],
        inputs["namespace"],
        {"spec": {"replicas": desired}},
        _request_timeout=context.timeout,
    )
    return {"changed": True, "previous_replicas": current, "replicas": desired}


ACTIONS = {"scale": ActionKind(prepare_deployment, scale, plan=plan_scale, idempotent=always)}
