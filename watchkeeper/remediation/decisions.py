"""Guarded remediation for incidents: decisions recorded before anything acts.

Every decision, taken or not, is a row of the audit trail with its reason and inputs; its
idempotency key (incident, root-cause alert, playbook, position) makes a second run find the
decision instead of taking it again.

An incident owes handling when correlation changed it (`revision`) after its decisions or reverts
were last recorded (`handled_revision`); recording them and catching up `handled_revision` is one
transaction, so a run that dies leaves the incident owed for the next run or the reconciler.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tasks.incidents import lock_incidents
from watchkeeper.config import Playbook, WatchkeeperConfig
from watchkeeper.notifications.senders import IncidentSummary
from watchkeeper.remediation.actions import REVERTIBLE
from watchkeeper.remediation.guards import load_guards
from watchkeeper.remediation.playbooks import AlertFacts, plan, select_playbook
from watchkeeper.store import Store
from watchkeeper.store.remediation import (
    CLAIMABLE,
    INITIAL,
    REVERT_SUFFIX,
    ActionStatus,
    Decision,
    RemediationAction,
)
from watchkeeper.store.schema import Alert, Incident, IncidentEvent, IncidentStatus
from watchkeeper.times import utcnow


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
    flow_run_id: str | None = None

    @classmethod
    def of(cls, row: RemediationAction) -> ActionRow:
        return cls(
            row.id,
            row.action,
            row.target,
            row.decision,
            row.reason,
            row.status,
            dict(row.inputs),
            row.flow_run_id,
        )


@dataclass(frozen=True)
class IncidentDecisions:
    playbook: Playbook | None
    rows: list[ActionRow]
    summary: IncidentSummary
    created: bool = False

    @property
    def awaiting(self) -> list[ActionRow]:
        return [r for r in self.rows if r.status == ActionStatus.AWAITING_APPROVAL]


def summary_of(incident: Incident) -> IncidentSummary:
    return IncidentSummary(
        incident.id, incident.title, incident.severity, incident.root_cause_service, incident.status
    )


def _mark_handled(session: Session, incident: Incident, revision: int) -> None:
    session.execute(
        update(Incident)
        .where(Incident.id == incident.id, Incident.handled_revision < revision)
        .values(handled_revision=revision)
        .execution_options(synchronize_session=False)
    )


def _decide(
    session: Session, config: WatchkeeperConfig, incident: Incident, flow_run_id: str | None, now: datetime
) -> IncidentDecisions:
    summary = summary_of(incident)
    alert = session.get(Alert, incident.root_cause_alert_id) if incident.root_cause_alert_id else None
    if alert is None:
        return IncidentDecisions(None, [], summary)
    facts = alert_facts(alert, incident.id)
    playbook = select_playbook(config.remediation.playbooks, facts)
    if playbook is None:
        return IncidentDecisions(None, [], summary)
    prefix = f"incident-{incident.id}/alert-{alert.id}/{playbook.name}/"
    existing = session.scalars(
        select(RemediationAction)
        .where(
            RemediationAction.idempotency_key.startswith(prefix, autoescape=True),
            ~RemediationAction.idempotency_key.endswith(REVERT_SUFFIX),
        )
        .order_by(RemediationAction.id)
    ).all()
    if existing:
        return IncidentDecisions(playbook, [ActionRow.of(r) for r in existing], summary)
    rows = []
    for planned in plan(playbook, facts, load_guards(session, config, now), now):
        row = RemediationAction(
            idempotency_key=f"{prefix}{planned.index}",
            incident_id=incident.id,
            alert_id=alert.id,
            playbook=playbook.name,
            action=planned.action,
            target=planned.target,
            decision=planned.decision,
            reason=planned.reason,
            inputs=planned.inputs,
            status=INITIAL[planned.decision],
            flow_run_id=flow_run_id,
            decided_at=now,
            calls=[],
        )
        session.add(row)
        rows.append(row)
    session.flush()
    session.add(
        IncidentEvent(
            incident_id=incident.id,
            kind="playbook",
            detail={"playbook": playbook.name, "decisions": {r.action: r.decision for r in rows}},
        )
    )
    return IncidentDecisions(playbook, [ActionRow.of(r) for r in rows], summary, created=True)


def _record_reverts(
    session: Session, incident: Incident, flow_run_id: str | None, now: datetime
) -> IncidentDecisions:
    """On resolution: one pending follow-up per succeeded action that is undone or told of it
    (switch back from the stable model, resolve the page, comment on the ticket)."""
    done = session.scalars(
        select(RemediationAction)
        .where(
            RemediationAction.incident_id == incident.id,
            RemediationAction.status == ActionStatus.SUCCEEDED,
            RemediationAction.action.in_(list(REVERTIBLE)),
            ~RemediationAction.idempotency_key.endswith(REVERT_SUFFIX),
        )
        .order_by(RemediationAction.id)
    ).all()
    keys = [f"{row.idempotency_key}{REVERT_SUFFIX}" for row in done]
    recorded = {
        r.idempotency_key: r
        for r in session.scalars(select(RemediationAction).where(RemediationAction.idempotency_key.in_(keys)))
    }
    rows = []
    for row, key in zip(done, keys, strict=True):
        follow_up = recorded.get(key)
        if follow_up is None:
            follow_up = RemediationAction(
                idempotency_key=key,
                incident_id=incident.id,
                alert_id=row.alert_id,
                playbook=row.playbook,
                action=row.action,
                target=row.target,
                decision=Decision.RUN,
                reason="the incident resolved",
                inputs={**row.inputs, "reverting": dict(row.result or {})},
                status=ActionStatus.PENDING,
                flow_run_id=flow_run_id,
                decided_at=now,
                calls=[],
            )
            session.add(follow_up)
        rows.append(follow_up)
    session.flush()
    return IncidentDecisions(None, [ActionRow.of(r) for r in rows], summary_of(incident), created=bool(rows))


def handle_incident(
    store: Store, config: WatchkeeperConfig, incident_id: int, flow_run_id: str | None
) -> IncidentDecisions:
    """Record what the incident's current state asks for (decisions while open, follow-ups once
    resolved) and catch up its handled revision, in one transaction; idempotent."""
    now = utcnow()
    with store.writing() as session:
        lock_incidents(session)
        incident = session.get(Incident, incident_id)
        if incident.status == IncidentStatus.OPEN:
            decisions = _decide(session, config, incident, flow_run_id, now)
        else:
            decisions = _record_reverts(session, incident, flow_run_id, now)
        _mark_handled(session, incident, incident.revision)
        return decisions


def owed_incidents(store: Store) -> list[int]:
    """Incidents changed since their decisions or follow-ups were last recorded."""
    with store.reading() as session:
        return list(
            session.scalars(
                select(Incident.id).where(Incident.handled_revision < Incident.revision).order_by(Incident.id)
            )
        )


def rows_of(store: Store, row_ids: list[int]) -> list[ActionRow]:
    with store.reading() as session:
        query = (
            select(RemediationAction).where(RemediationAction.id.in_(row_ids)).order_by(RemediationAction.id)
        )
        return [ActionRow.of(r) for r in session.scalars(query)]


def runnable(decisions: IncidentDecisions) -> list[ActionRow]:
    return [r for r in decisions.rows if r.status in CLAIMABLE]
