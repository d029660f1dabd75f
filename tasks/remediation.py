"""Guarded remediation for incidents: decisions recorded before anything acts, actions as Prefect tasks.

The store holds everything a guard needs (the kill switch, the audit trail that cooldowns and the
hourly budget are computed from), so the guards hold across restarts and replicas. Every decision,
taken or not, is a row of the audit trail with its reason and inputs; an action's row carries an
idempotency key (incident, root-cause alert, playbook, position), so a retried run finds what was
already decided and done instead of doing it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tasks.incidents import lock_incidents
from tasks.playbooks import COMMUNICATION, AlertFacts, Guards, plan, select_playbook
from watchkeeper.actions import EXECUTORS, REVERTERS, ActionContext, IncidentSummary
from watchkeeper.config import Playbook, WatchkeeperConfig
from watchkeeper.store import Store
from watchkeeper.store.actions import remediation_on
from watchkeeper.store.schema import Alert, Incident, IncidentEvent, RemediationAction, utcnow

STATUS_FOR = {
    "run": "pending",
    "needs_approval": "awaiting_approval",
    "dry_run": "not_run",
    "skip": "not_run",
}


def load_guards(session: Session, config: WatchkeeperConfig, now: datetime) -> Guards:
    longest = max((p.cooldown for p in config.remediation.playbooks), default=timedelta(0))
    ran = RemediationAction.decision.in_(["run", "needs_approval"]) & RemediationAction.status.in_(
        ["pending", "running", "succeeded", "approved"]
    )
    last_run = {
        (action, target): at
        for action, target, at in session.execute(
            select(RemediationAction.action, RemediationAction.target, func.max(RemediationAction.decided_at))
            .where(ran, RemediationAction.decided_at >= now - longest)
            .group_by(RemediationAction.action, RemediationAction.target)
        )
    }
    runs = session.scalar(
        select(func.count())
        .select_from(RemediationAction)
        .where(
            ran,
            RemediationAction.decided_at >= now - timedelta(hours=1),
            RemediationAction.action.not_in(list(COMMUNICATION)),
        )
    )
    return Guards(remediation_on(session), last_run, runs or 0, config.remediation.max_actions_per_hour)


def alert_facts(alert: Alert, incident_id: int | None = None) -> AlertFacts:
    return AlertFacts(alert.alertname, alert.status, alert.labels, alert.severity, incident_id, alert.id)


@dataclass(frozen=True)
class ActionRow:
    id: int
    action: str
    target: str
    decision: str
    reason: str
    status: str
    inputs: dict[str, Any]

    @classmethod
    def of(cls, row: RemediationAction) -> ActionRow:
        return cls(row.id, row.action, row.target, row.decision, row.reason, row.status, dict(row.inputs))


@dataclass(frozen=True)
class IncidentDecisions:
    playbook: Playbook | None
    rows: list[ActionRow]
    summary: IncidentSummary


def summary_of(incident: Incident) -> IncidentSummary:
    return IncidentSummary(
        incident.id, incident.title, incident.severity, incident.root_cause_service, incident.status
    )


def decide(
    store: Store, config: WatchkeeperConfig, incident_id: int, flow_run_id: str | None
) -> IncidentDecisions:
    """Record the decisions for the incident's root-cause alert, or return those already recorded."""
    now = utcnow()
    with store.writing() as session:
        lock_incidents(session)
        incident = session.get(Incident, incident_id)
        alert = session.get(Alert, incident.root_cause_alert_id) if incident.root_cause_alert_id else None
        summary = summary_of(incident)
        if alert is None:
            return IncidentDecisions(None, [], summary)
        facts = alert_facts(alert, incident_id)
        playbook = select_playbook(config.remediation.playbooks, facts)
        if playbook is None:
            return IncidentDecisions(None, [], summary)
        prefix = f"incident-{incident_id}/alert-{alert.id}/{playbook.name}/"
        existing = session.scalars(
            select(RemediationAction)
            .where(RemediationAction.idempotency_key.startswith(prefix, autoescape=True))
            .order_by(RemediationAction.id)
        ).all()
        if existing:
            return IncidentDecisions(playbook, [ActionRow.of(r) for r in existing], summary)
        if incident.status != "open":
            return IncidentDecisions(playbook, [], summary)
        rows = []
        for planned in plan(playbook, facts, load_guards(session, config, now), now):
            row = RemediationAction(
                idempotency_key=f"{prefix}{planned.index}",
                incident_id=incident_id,
                alert_id=alert.id,
                playbook=playbook.name,
                action=planned.action,
                target=planned.target,
                decision=planned.decision,
                reason=planned.reason,
                inputs=planned.inputs,
                status=STATUS_FOR[planned.decision],
                flow_run_id=flow_run_id,
                decided_at=now,
            )
            session.add(row)
            rows.append(row)
        session.flush()
        session.add(
            IncidentEvent(
                incident_id=incident_id,
                kind="playbook",
                detail={"playbook": playbook.name, "decisions": {r.action: r.decision for r in rows}},
            )
        )
        return IncidentDecisions(playbook, [ActionRow.of(r) for r in rows], summary)


def settle(store: Store, row_ids: list[int], status: str, reason: str | None = None) -> None:
    """Approval outcomes: approve, reject or time out the rows awaiting approval."""
    with store.writing() as session:
        for row in session.scalars(select(RemediationAction).where(RemediationAction.id.in_(row_ids))):
            row.status = status
            if reason:
                row.reason = f"{row.reason}; {reason}"
            if status != "approved":
                row.finished_at = utcnow()


def _finish(
    store: Store, row_id: int, status: str, result: dict[str, Any], incident_ticket: str | None
) -> None:
    with store.writing() as session:
        row = session.get(RemediationAction, row_id)
        row.status, row.result, row.finished_at = status, result, utcnow()
        if incident_ticket is not None and row.incident_id is not None:
            session.get(Incident, row.incident_id).ticket_id = incident_ticket


def execute_row(
    store: Store, config: WatchkeeperConfig, row_id: int, summary: IncidentSummary
) -> dict[str, Any]:
    """Run one recorded action; done once, whatever retries there are."""
    with store.writing() as session:
        row = session.get(RemediationAction, row_id)
        if row.status == "succeeded":
            return dict(row.result or {})
        if row.action not in COMMUNICATION and not remediation_on(session):
            row.status, row.finished_at = "skipped", utcnow()
            row.reason = f"{row.reason}; the kill switch was turned off before it ran"
            return {"skipped": "kill switch"}
        row.status = "running"
        action, inputs = row.action, dict(row.inputs)
    context = ActionContext(config, summary, config.remediation.action_timeout.total_seconds())
    try:
        result = EXECUTORS[action](inputs, context)
    except Exception as exc:
        _finish(store, row_id, "failed", {"error": f"{type(exc).__name__}: {exc}"[:2000]}, None)
        raise
    _finish(store, row_id, "succeeded", result, result.get("ticket_id") if action == "ticket" else None)
    return result


@task(name="remediation-action", retries=2, retry_delay_seconds=[1, 3], cache_policy=NO_CACHE)
def run_action(
    store: Store, config: WatchkeeperConfig, row: ActionRow, summary: IncidentSummary
) -> dict[str, Any]:
    """One playbook action against its target, with retries and a timeout."""
    return execute_row(store, config, row.id, summary)


def revert(store: Store, config: WatchkeeperConfig, incident_id: int) -> list[dict[str, Any]]:
    """On resolution: switch back from the stable model, resolve PagerDuty, comment on the ticket."""
    with store.writing() as session:
        incident = session.get(Incident, incident_id)
        summary = summary_of(incident)
        done = session.scalars(
            select(RemediationAction).where(
                RemediationAction.incident_id == incident_id,
                RemediationAction.status == "succeeded",
                RemediationAction.action.in_(list(REVERTERS)),
                ~RemediationAction.idempotency_key.endswith("/resolved"),
            )
        ).all()
        todo = []
        for row in done:
            key = f"{row.idempotency_key}/resolved"
            if session.scalar(select(RemediationAction.id).where(RemediationAction.idempotency_key == key)):
                continue
            follow_up = RemediationAction(
                idempotency_key=key,
                incident_id=incident_id,
                alert_id=row.alert_id,
                playbook=row.playbook,
                action=row.action,
                target=row.target,
                decision="run",
                reason="the incident resolved",
                inputs=row.inputs,
                status="running",
            )
            session.add(follow_up)
            session.flush()
            todo.append((follow_up.id, row.action, dict(row.inputs), dict(row.result or {})))
    context = ActionContext(config, summary, config.remediation.action_timeout.total_seconds())
    results = []
    for row_id, action, inputs, result in todo:
        try:
            outcome = REVERTERS[action](inputs, result, context)
        except Exception as exc:  # noqa: BLE001 - recorded; the incident stays resolved either way
            _finish(store, row_id, "failed", {"error": f"{type(exc).__name__}: {exc}"[:2000]}, None)
            continue
        _finish(store, row_id, "succeeded", outcome, None)
        results.append({"action": action, **outcome})
    return results


def report_markdown(report: dict[str, Any]) -> str:
    """The automation report as the markdown of the `automation-report` Prefect artifact."""
    rate = "-" if report["success_rate"] is None else f"{report['success_rate']:.0%}"
    kinds = sorted({kind for counts in report["by_action"].values() for kind in counts})
    lines = [
        f"# Automation, last {report['hours']} h",
        "",
        f"{report['decisions']} decisions, {report['executed']} executed, {report['succeeded']} succeeded "
        f"(success rate {rate}).",
        "",
        "| action | " + " | ".join(kinds) + " |",
        "| --- | " + " | ".join("---" for _ in kinds) + " |",
        *(
            f"| {action} | " + " | ".join(str(counts.get(k, 0)) for k in kinds) + " |"
            for action, counts in report["by_action"].items()
        ),
        "",
        "| when | incident | action | target | decision | status | reason |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {a['decided_at']} | {a['incident_id']} | {a['action']} | {a['target']} | {a['decision']} | "
            f"{a['status']} | {a['reason']} |"
            for a in report["recent"]
        ),
    ]
    return "\n".join(lines)
