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

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from watchkeeper.config import (
    MaintenanceWindow,
    Playbook,
    PlaybookAction,
)
from watchkeeper.remediation.actions import ACTIONS
from watchkeeper.remediation.templates import MissingPlaceholder
from watchkeeper.store.remediation import Decision
from watchkeeper.store.schema import AlertStatus

COMMUNICATION = frozenset({"notify", "ticket"})


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
    """The action's target in words and its rendered parameters (each action prepares its own);
    raises MissingPlaceholder or UnsafeTarget."""
    return ACTIONS[spec.action].prepare(spec, alert.context)


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
