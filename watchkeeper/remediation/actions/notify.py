"""notify: the incident to a notification target (`watchkeeper.notifications.senders`); when it
resolves, PagerDuty's page is resolved and the other targets are told."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watchkeeper.config import NotifyAction
from watchkeeper.notifications.senders import send_incident
from watchkeeper.remediation.actions.kind import ActionContext, ActionKind


def prepare(spec: NotifyAction, _context: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    return f"notify/{spec.target}", {"target": spec.target}


def notify(inputs: dict[str, Any], _plan: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    return send_incident(context.target(inputs["target"]), context.incident, False, context.timeout)


def notify_resolved(
    inputs: dict[str, Any], _result: dict[str, Any], context: ActionContext
) -> dict[str, Any]:
    target = context.target(inputs["target"])
    return send_incident(target, context.incident, target.kind == "pagerduty", context.timeout)


def pagerduty(inputs: dict[str, Any], context: ActionContext) -> bool:
    """PagerDuty deduplicates events by dedup_key: a second trigger of one incident is one page."""
    return context.target(inputs["target"]).kind == "pagerduty"


ACTIONS = {"notify": ActionKind(prepare, notify, revert=notify_resolved, idempotent=pagerduty)}
