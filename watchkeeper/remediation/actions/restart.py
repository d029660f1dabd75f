"""restart: a Deployment's rollout, by the restart annotation kubectl sets."""

from __future__ import annotations

from typing import Any

from watchkeeper.remediation.actions.kind import ActionContext, ActionKind, always
from watchkeeper.remediation.templates import prepare_deployment
from watchkeeper.times import utcnow


def plan_restart(_inputs: dict[str, Any], _context: ActionContext) -> dict[str, Any]:
    return {"restarted_at": utcnow().isoformat()}


def restart(inputs: dict[str, Any], plan: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    """The restart annotation with the planned time: the same value twice starts one rollout."""
    from kubernetes import client

    at = plan["restarted_at"]
    patch = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": at}}}}}
    client.AppsV1Api(context.kubernetes).patch_namespaced_deployment(
        inputs["deployment"], inputs["namespace"], patch, _request_timeout=context.timeout
    )
    return {"restarted_at": at}


ACTIONS = {"restart": ActionKind(prepare_deployment, restart, plan=plan_restart, idempotent=always)}
