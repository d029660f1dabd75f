"""Which playbook an alert selects, and what each of its actions would do and why. Pure logic.

The decision for each action, first match wins:
- the alert has resolved: no actions at all (remediation never acts on a resolved alert);
- a placeholder of the action names a label the alert lacks, the model has no stable model, a
  label value makes an invalid Kubernetes name, or the URL's host is not allowed: skip;
- the kill switch is off: skip (notify and ticket actions still go out: they change nothing);
- a maintenance window covers the alert: skip (everything, notifications included);
- the playbook is not enabled: dry_run;
- the same action on the same target ran within the playbook's cooldown: skip;
- the hourly action budget is spent: skip (notify and ticket do not count);
- the playbook requires approval: needs_approval;
- otherwise: run.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from watchkeeper.config import (
    FallbackAction,
    HttpAction,
    MaintenanceWindow,
    NotifyAction,
    Playbook,
    PlaybookAction,
    RestartAction,
    ScaleAction,
    SecretRef,
    TicketAction,
)
from watchkeeper.notifications.calls import refused_host
from watchkeeper.store.remediation import Decision
from watchkeeper.store.schema import AlertStatus

COMMUNICATION = frozenset({"notify", "ticket"})
KUBERNETES_LABEL_VALUE = re.compile(r"^(?=.{0,63}$)(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# A Kubernetes object name (DNS-1123 subdomain), checked after placeholders are filled in.
KUBERNETES_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


@dataclass(frozen=True)
class AlertFacts:
    alertname: str
    status: str
    labels: Mapping[str, str]
    severity: str | None = None
    incident_id: int | None = None
    alert_id: int | None = None

    @property
    def context(self) -> dict[str, str]:
        """What placeholders such as {model_name} may name: the labels, and the incident's id."""
        extra = {"incident_id": str(self.incident_id)} if self.incident_id is not None else {}
        return {**self.labels, "alertname": self.alertname, **extra}


@dataclass(frozen=True)
class Guards:
    """What the store says about earlier actions; see `watchkeeper.remediation.guards.load_guards`."""

    remediation_on: bool = True
    last_run: Mapping[tuple[str, str], datetime] = field(default_factory=dict)
    runs_last_hour: int = 0
    max_per_hour: int = 20
    maintenance_windows: tuple[MaintenanceWindow, ...] = ()


@dataclass(frozen=True)
class PlannedAction:
    index: int
    action: str
    target: str
    decision: Decision
    reason: str
    inputs: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "target": self.target,
            "decision": self.decision,
            "reason": self.reason,
            "inputs": self.inputs,
        }


class MissingPlaceholder(KeyError):
    pass


class UnsafeTarget(LookupError):
    """A rendered target the action must not reach: a bad Kubernetes name, a host not allowed."""


class _Strict(dict):
    def __missing__(self, key: str) -> str:
        raise MissingPlaceholder(key)


def render(value: Any, context: Mapping[str, str]) -> Any:
    """Fill {placeholders} in strings, recursively through dicts and lists."""
    if isinstance(value, str):
        return string.Formatter().vformat(value, (), _Strict(context))
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def render_url(template: str, context: Mapping[str, str]) -> str:
    """Fill {placeholders} in a URL with each value percent-encoded as one path segment, so that a
    label value can neither add path segments nor change the host, query or fragment."""
    encoded = {k: quote(str(v), safe="") for k, v in context.items()}
    return string.Formatter().vformat(template, (), _Strict(encoded))


def kubernetes_name(template: str, context: Mapping[str, str]) -> str:
    name = render(template, context)
    if not KUBERNETES_NAME.match(name):
        raise UnsafeTarget(f"{name!r} is not a valid Kubernetes name")
    return name


def allowed_url(template: str, context: Mapping[str, str], hosts: list[str]) -> str:
    url = render_url(template, context)
    refusal = refused_host(url, hosts)
    if refusal is not None:
        raise UnsafeTarget(refusal)
    return url


def matches(playbook: Playbook, alert: AlertFacts) -> bool:
    match = playbook.match
    return (
        match.alertname == alert.alertname
        and (match.severity is None or match.severity == (alert.severity or alert.labels.get("severity")))
        and all(alert.labels.get(k) == v for k, v in match.labels.items())
    )


def select_playbook(playbooks: list[Playbook], alert: AlertFacts) -> Playbook | None:
    return next((p for p in playbooks if matches(p, alert)), None)


def target_and_inputs(spec: PlaybookAction, alert: AlertFacts) -> tuple[str, dict[str, Any]]:
    """The action's target in words and its rendered parameters; raises MissingPlaceholder."""
    context = alert.context
    if isinstance(spec, ScaleAction | RestartAction):
        deployment = kubernetes_name(spec.deployment, context)
        inputs = spec.model_dump(mode="json", exclude={"action"}) | {"deployment": deployment}
        return f"deployment/{spec.namespace}/{deployment}", inputs
    if isinstance(spec, FallbackAction):
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
            "secret": _reference(spec.secret),
        }
        if spec.via == "service" and not KUBERNETES_LABEL_VALUE.match(stable):
            raise UnsafeTarget(f"{stable!r} is not a valid Kubernetes label value")
        return f"model/{model}", inputs
    if isinstance(spec, HttpAction):
        hosts = spec.hosts_for(spec.url)
        url = allowed_url(spec.url, context, hosts)
        inputs = {
            "url": url,
            "allowed_hosts": hosts,
            "method": spec.method,
            "body": render(spec.body, context),
        }
        return url, inputs | {"idempotent": spec.idempotent, "secret": _reference(spec.secret)}
    if isinstance(spec, NotifyAction):
        return f"notify/{spec.target}", {"target": spec.target}
    if isinstance(spec, TicketAction):
        return f"ticket/{spec.project}", {
            "url": spec.url,
            "allowed_hosts": spec.hosts_for(spec.url),
            "project": spec.project,
            "issue_type": spec.issue_type,
            "secret": _reference(spec.secret),
        }
    raise TypeError(f"unknown action {spec!r}")


def _reference(ref: SecretRef | None) -> dict[str, str] | None:
    """Where the action's credential lives, by name, for the action to resolve when it runs."""
    return ref.model_dump(exclude_none=True) if ref is not None else None


def maintenance(
    windows: tuple[MaintenanceWindow, ...], labels: Mapping[str, str], now: datetime
) -> str | None:
    """Why nothing may act now, or None: the first maintenance window covering the alert."""
    for window in windows:
        until = window.active_until(now, labels)
        if until is not None:
            return f"inside maintenance window {window.name!r} until {until.isoformat()}"
    return None


def plan(playbook: Playbook, alert: AlertFacts, guards: Guards, now: datetime) -> list[PlannedAction]:
    """Every action of the playbook with its decision and the reason for it."""
    if alert.status != AlertStatus.FIRING:
        return []
    budget = guards.max_per_hour - guards.runs_last_hour
    in_maintenance = maintenance(guards.maintenance_windows, alert.labels, now)
    planned = []
    for index, spec in enumerate(playbook.actions):
        try:
            target, inputs = target_and_inputs(spec, alert)
        except MissingPlaceholder as exc:
            reason = f"the alert has no {exc.args[0]!r} label"
            planned.append(PlannedAction(index, spec.action, "-", Decision.SKIP, reason, {}))
            continue
        except LookupError as exc:
            planned.append(PlannedAction(index, spec.action, "-", Decision.SKIP, str(exc), {}))
            continue
        decision, reason = _decide(playbook, spec.action, target, guards, now, budget, in_maintenance)
        if decision in (Decision.RUN, Decision.NEEDS_APPROVAL) and spec.action not in COMMUNICATION:
            budget -= 1
        planned.append(PlannedAction(index, spec.action, target, decision, reason, inputs))
    return planned


def _decide(
    playbook: Playbook,
    action: str,
    target: str,
    guards: Guards,
    now: datetime,
    budget: int,
    in_maintenance: str | None,
) -> tuple[Decision, str]:
    communication = action in COMMUNICATION
    if not guards.remediation_on and not communication:
        return Decision.SKIP, "remediation is switched off (kill switch)"
    if in_maintenance is not None:
        return Decision.SKIP, in_maintenance
    if not playbook.enabled:
        return Decision.DRY_RUN, f"playbook {playbook.name!r} is not enabled: dry run"
    last = guards.last_run.get((action, target))
    if last is not None and now - last < playbook.cooldown:
        return (
            Decision.SKIP,
            f"cooldown: ran at {last.isoformat()}, allowed again after "
            f"{(last + playbook.cooldown).isoformat()}",
        )
    if budget <= 0 and not communication:
        return Decision.SKIP, f"hourly limit of {guards.max_per_hour} actions reached"
    if playbook.require_approval:
        return Decision.NEEDS_APPROVAL, f"playbook {playbook.name!r} requires approval"
    return Decision.RUN, f"playbook {playbook.name!r} matched {playbook.match.alertname}"
