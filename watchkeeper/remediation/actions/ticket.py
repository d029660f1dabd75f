"""ticket: an issue in the tracker (Jira's REST shape); a comment on it when the incident resolves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watchkeeper.config import TicketAction
from watchkeeper.notifications.calls import CallFailed
from watchkeeper.remediation.actions.kind import ActionContext, ActionKind
from watchkeeper.remediation.templates import secret_reference


def prepare(spec: TicketAction, _context: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    return f"ticket/{spec.project}", {
        "url": spec.url,
        "allowed_hosts": spec.hosts_for(spec.url),
        "project": spec.project,
        "issue_type": spec.issue_type,
        "secret": secret_reference(spec.secret),
    }


def ticket(inputs: dict[str, Any], _plan: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    incident = context.incident
    body = {
        "fields": {
            "project": {"key": inputs["project"]},
            "summary": incident.text()[:250],
            "description": incident.text(),
            "issuetype": {"name": inputs["issue_type"]},
            "labels": ["watchkeeper", f"incident-{incident.id}"],
        }
    }
    created = context.call("POST", f"{inputs['url'].rstrip('/')}/issue", body, inputs).json()
    key = created.get("key") or created.get("id")
    if not key:
        raise CallFailed(f"the ticket endpoint answered without an issue key: {created}")
    return {"ticket_id": str(key)}


def comment_ticket(inputs: dict[str, Any], result: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    url = f"{inputs['url'].rstrip('/')}/issue/{result['ticket_id']}/comment"
    context.call("POST", url, {"body": context.incident.text()}, inputs)
    return {"commented": result["ticket_id"]}


ACTIONS = {"ticket": ActionKind(prepare, ticket, revert=comment_ticket)}
