"""Messages to notification targets: an incident (opened, or resolved) to Slack, PagerDuty, a
webhook or e-mail, and a model report (a summary, or the HTML by e-mail)."""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

from watchkeeper.config import NotificationTarget
from watchkeeper.notifications.calls import CallFailed, CallRefused, request
from watchkeeper.secrets import resolve_secret
from watchkeeper.severity import pagerduty_severity

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


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


def _secret(target: NotificationTarget) -> str | None:
    return resolve_secret(target.secret) if target.secret is not None else None


def send_incident(
    target: NotificationTarget, incident: IncidentSummary, resolved: bool, timeout: float
) -> dict[str, Any]:
    """Tell `target` of the incident; PagerDuty triggers a page (deduplicated per incident), or
    resolves it when `resolved`."""
    text = incident.text()
    if target.kind == "slack":
        request("POST", _secret(target) or target.url, {"text": text}, timeout, shown_as=target.name)
        return {"sent": "slack"}
    if target.kind == "pagerduty":
        event: dict[str, Any] = {
            "routing_key": _secret(target),
            "event_action": "resolve" if resolved else "trigger",
            "dedup_key": f"watchkeeper-incident-{incident.id}",
        }
        if not resolved:
            event["payload"] = {
                "summary": text[:1024],
                "source": "watchkeeper",
                "severity": pagerduty_severity(incident.severity),
                "custom_details": {"root_cause": incident.root_cause, "incident": incident.id},
            }
        response = request("POST", target.url or PAGERDUTY_EVENTS_URL, event, timeout)
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
        request("POST", target.url, body, timeout, _secret(target))
        return {"sent": "webhook"}
    send_email(target, text[:200], text, _secret(target), timeout)
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
    secret = _secret(target)
    if target.kind == "email":
        send_email(target, subject, text, secret, timeout, (filename, html))
        return {"sent": "email", "to": target.to}
    if target.kind == "pagerduty":
        raise CallRefused("PagerDuty pages incidents; a report is not sent there")
    url = (secret if target.kind == "slack" else None) or target.url
    if not url:
        raise CallFailed(f"{target.name} has no URL")
    token = secret if target.kind == "webhook" else None
    response = request("POST", url, {"text": text}, timeout, token, shown_as=target.name)
    return {"sent": target.kind, "status_code": response.status_code}
