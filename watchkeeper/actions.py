"""What remediation actions do to the world: Kubernetes, HTTP endpoints, notifications, tickets.

Every action is an `ActionKind` registered in `ACTIONS` under its config name:
- `plan(inputs, context) -> plan`: what to do, computed once before the first call and recorded
  (scale reads the replicas and decides "set 4"), so that a retry or a re-send after a crash sets
  the same 4 instead of adding again to a world it already changed;
- `execute(inputs, plan, context) -> result`: the call itself;
- `revert(inputs, result, context)`, for actions undone when the incident resolves;
- `idempotent(inputs, context)`: whether sending the planned call twice leaves the world as once
  does, the only case in which the reconciler re-sends an action whose claimant died mid-call.

A failure raises `ActionFailed` (or the client's own error) so the Prefect task retries it;
`ActionRefused` is never retried. Inputs carry at most a secret's reference, resolved when the
action runs and never put in a result, and a secret is sent only to a host the action allows.
"""

from __future__ import annotations

import functools
import math
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import httpx

from watchkeeper.config import NotificationTarget, SecretRef, WatchkeeperConfig
from watchkeeper.secrets import resolve_secret

PAGERDUTY_SEVERITY = {"critical": "critical", "page": "critical", "error": "error", "warning": "warning"}


class ActionFailed(RuntimeError):
    pass


class ActionRefused(ActionFailed):
    """The action must not be sent at all (a host outside its allowed hosts); retrying cannot help."""


@dataclass
class IncidentSummary:
    id: int | None
    title: str
    severity: str | None
    root_cause: str | None
    status: str = "open"

    def text(self) -> str:
        cause = f"; likely root cause: {self.root_cause}" if self.root_cause else ""
        return f"[Watchkeeper] incident {self.id} {self.status}: {self.title}{cause}"


@dataclass
class ActionContext:
    config: WatchkeeperConfig
    incident: IncidentSummary
    timeout: float

    @cached_property
    def kubernetes(self) -> Any:
        from kubernetes import client
        from kubernetes import config as kube_config

        access = self.config.remediation.kubernetes
        if access.kubeconfig is None:
            kube_config.load_incluster_config()
            return client.ApiClient()
        return kube_config.new_client_from_config(config_file=str(access.kubeconfig), context=access.context)

    def secret(self, ref: SecretRef | None) -> str | None:
        return resolve_secret(ref) if ref is not None else None

    def input_secret(self, inputs: dict[str, Any]) -> str | None:
        """The bearer token an action's inputs refer to (by name; the value is never in inputs)."""
        ref = inputs.get("secret")
        return self.secret(SecretRef.model_validate(ref)) if ref else None

    def target(self, name: str) -> NotificationTarget:
        return next(t for t in self.config.notifications if t.name == name)


def _bearer(token: str | None) -> dict[str, str]:
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


def _request(
    method: str,
    url: str,
    body: Any,
    context: ActionContext,
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> httpx.Response:
    refusal = refused_host(url, allowed_hosts)
    if refusal is not None:
        raise ActionRefused(f"not sent: {refusal}")
    response = httpx.request(
        method, url, json=body, headers=_bearer(token), timeout=context.timeout, verify=tls_context()
    )
    if response.status_code >= 400:
        raise ActionFailed(f"{method} {url} answered {response.status_code}: {response.text[:200]}")
    return response


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


def plan_restart(_inputs: dict[str, Any], _context: ActionContext) -> dict[str, Any]:
    return {"restarted_at": datetime.now(UTC).isoformat()}


def restart(inputs: dict[str, Any], plan: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    """The restart annotation with the planned time: the same value twice starts one rollout."""
    from kubernetes import client

    at = plan["restarted_at"]
    patch = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": at}}}}}
    client.AppsV1Api(context.kubernetes).patch_namespaced_deployment(
        inputs["deployment"], inputs["namespace"], patch, _request_timeout=context.timeout
    )
    return {"restarted_at": at}


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
    token = context.input_secret(inputs)
    body = {**inputs["body"], "active": True}
    response = _request("POST", inputs["url"], body, context, token, inputs.get("allowed_hosts"))
    return {"status_code": response.status_code, "routed_to": inputs["stable_model"]}


def revert_fallback(inputs: dict[str, Any], result: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    if not inputs.get("revert_on_resolve"):
        return {"reverted": False, "note": "the playbook keeps the stable model"}
    if inputs["via"] == "service":
        return _point_service(inputs, context, result.get("previous_selector") or inputs["model"])
    token = context.input_secret(inputs)
    body = {**inputs["body"], "active": False}
    response = _request("POST", inputs["url"], body, context, token, inputs.get("allowed_hosts"))
    return {"status_code": response.status_code, "routed_to": inputs["model"]}


def http_endpoint(inputs: dict[str, Any], _plan: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    response = _request(
        inputs["method"],
        inputs["url"],
        inputs["body"] or None,
        context,
        context.input_secret(inputs),
        inputs.get("allowed_hosts"),
    )
    return {"status_code": response.status_code}


def _send(target: NotificationTarget, context: ActionContext, resolved: bool) -> dict[str, Any]:
    incident = context.incident
    text = incident.text()
    if target.kind == "slack":
        url = context.secret(target.secret) or target.url
        _request("POST", url, {"text": text}, context)
        return {"sent": "slack"}
    if target.kind == "pagerduty":
        event = {
            "routing_key": context.secret(target.secret),
            "event_action": "resolve" if resolved else "trigger",
            "dedup_key": f"watchkeeper-incident-{incident.id}",
        }
        if not resolved:
            event["payload"] = {
                "summary": text[:1024],
                "source": "watchkeeper",
                "severity": PAGERDUTY_SEVERITY.get(incident.severity or "", "error"),
                "custom_details": {"root_cause": incident.root_cause, "incident": incident.id},
            }
        response = _request("POST", target.url or "https://events.pagerduty.com/v2/enqueue", event, context)
        return {
            "sent": "pagerduty",
            "event_action": event["event_action"],
            "dedup_key": event["dedup_key"],
            "status_code": response.status_code,
        }
    if target.kind == "webhook":
        body = {
            "incident": incident.id,
            "status": incident.status,
            "title": incident.title,
            "severity": incident.severity,
            "root_cause": incident.root_cause,
        }
        _request("POST", target.url, body, context, context.secret(target.secret))
        return {"sent": "webhook"}
    return _email(target, context, text)


def _email(target: NotificationTarget, context: ActionContext, text: str) -> dict[str, Any]:
    send_email(target, text[:200], text, context.secret(target.secret), context.timeout)
    return {"sent": "email", "to": target.to}


def send_email(
    target: NotificationTarget,
    subject: str,
    text: str,
    password: str | None,
    timeout: float,
    attachment: tuple[str, str] | None = None,
) -> None:
    """Mail `text` to the target's recipients through its SMTP server (`url`, smtp://user@host:port),
    with an optional (file name, HTML) attachment."""
    where = urlsplit(target.url or "smtp://127.0.0.1:25")
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = f"watchkeeper@{where.hostname or 'localhost'}"
    message["To"] = ", ".join(target.to)
    message.set_content(text)
    if attachment is not None:
        name, content = attachment
        message.add_attachment(content, subtype="html", filename=name)
    with smtplib.SMTP(where.hostname or "127.0.0.1", where.port or 25, timeout=timeout) as smtp:
        if where.username and password:
            smtp.login(where.username, password)
        smtp.send_message(message)


def send_report(
    target: NotificationTarget, subject: str, text: str, html: str, filename: str, timeout: float
) -> dict[str, Any]:
    """A model report to a notification target: Slack and webhooks get the summary (which carries
    the key figures itself), e-mail the summary with the HTML attached. PagerDuty pages incidents,
    never reports: refused."""
    secret = resolve_secret(target.secret) if target.secret is not None else None
    if target.kind == "email":
        send_email(target, subject, text, secret, timeout, (filename, html))
        return {"sent": "email", "to": target.to}
    if target.kind == "pagerduty":
        raise ActionRefused("PagerDuty pages incidents; a report is not sent there")
    url = (secret if target.kind == "slack" else None) or target.url
    token = secret if target.kind == "webhook" else None
    if not url:
        raise ActionFailed(f"{target.name} has no URL")
    response = httpx.post(
        url, json={"text": text}, headers=_bearer(token), timeout=timeout, verify=tls_context()
    )
    if response.status_code >= 400:
        raise ActionFailed(f"POST {target.name} answered {response.status_code}: {response.text[:200]}")
    return {"sent": target.kind, "status_code": response.status_code}


def notify(inputs: dict[str, Any], _plan: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    return _send(context.target(inputs["target"]), context, resolved=False)


def notify_resolved(
    inputs: dict[str, Any], _result: dict[str, Any], context: ActionContext
) -> dict[str, Any]:
    """PagerDuty resolves the incident's page; the other targets are told it resolved."""
    target = context.target(inputs["target"])
    return _send(target, context, resolved=target.kind == "pagerduty")


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
    token = context.input_secret(inputs)
    url = f"{inputs['url'].rstrip('/')}/issue"
    created = _request("POST", url, body, context, token, inputs.get("allowed_hosts")).json()
    key = created.get("key") or created.get("id")
    if not key:
        raise ActionFailed(f"the ticket endpoint answered without an issue key: {created}")
    return {"ticket_id": str(key)}


def comment_ticket(inputs: dict[str, Any], result: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    token = context.input_secret(inputs)
    url = f"{inputs['url'].rstrip('/')}/issue/{result['ticket_id']}/comment"
    _request("POST", url, {"body": context.incident.text()}, context, token, inputs.get("allowed_hosts"))
    return {"commented": result["ticket_id"]}


def _no_plan(_inputs: dict[str, Any], _context: ActionContext) -> dict[str, Any]:
    return {}


def _never(_inputs: dict[str, Any], _context: ActionContext) -> bool:
    return False


def _always(_inputs: dict[str, Any], _context: ActionContext) -> bool:
    return True


def _declared(inputs: dict[str, Any], _context: ActionContext) -> bool:
    """An endpoint the operator declared idempotent (`idempotent: true`), or a Service selector."""
    return bool(inputs.get("idempotent")) or inputs.get("via") == "service"


def _pagerduty(inputs: dict[str, Any], context: ActionContext) -> bool:
    """PagerDuty deduplicates events by dedup_key: a second trigger of one incident is one page."""
    return context.target(inputs["target"]).kind == "pagerduty"


Executor = Callable[[dict[str, Any], dict[str, Any], ActionContext], dict[str, Any]]
Reverter = Callable[[dict[str, Any], dict[str, Any], ActionContext], dict[str, Any]]


@dataclass(frozen=True)
class ActionKind:
    execute: Executor
    plan: Callable[[dict[str, Any], ActionContext], dict[str, Any]] = _no_plan
    revert: Reverter | None = None
    idempotent: Callable[[dict[str, Any], ActionContext], bool] = _never


ACTIONS: dict[str, ActionKind] = {
    "scale": ActionKind(scale, plan=plan_scale, idempotent=_always),
    "restart": ActionKind(restart, plan=plan_restart, idempotent=_always),
    "fallback_model": ActionKind(fallback_model, revert=revert_fallback, idempotent=_declared),
    "circuit_breaker": ActionKind(http_endpoint, idempotent=_declared),
    "invalidate_cache": ActionKind(http_endpoint, idempotent=_declared),
    "notify": ActionKind(notify, revert=notify_resolved, idempotent=_pagerduty),
    "ticket": ActionKind(ticket, revert=comment_ticket),
}
REVERTIBLE = frozenset(name for name, kind in ACTIONS.items() if kind.revert is not None)
