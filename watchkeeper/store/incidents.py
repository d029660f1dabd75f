"""The read side of alerts and incidents, shared by the HTTP API and the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from sqlalchemy import func, select

from watchkeeper.config import Traces
from watchkeeper.store import Store, paging
from watchkeeper.store.lifecycle import checklist
from watchkeeper.store.paging import Page
from watchkeeper.store.samples import Sampling, traced_examples
from watchkeeper.store.schema import (
    Alert,
    AlertStatus,
    Incident,
    IncidentEvent,
    IncidentMember,
    IncidentStatus,
)
from watchkeeper.times import utcnow


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def alert_json(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "fingerprint": alert.fingerprint,
        "alertname": alert.alertname,
        "status": alert.status,
        "severity": alert.severity,
        "starts_at": iso(alert.starts_at),
        "ends_at": iso(alert.ends_at),
        "labels": alert.labels,
        "annotations": alert.annotations,
        "correlated": alert.correlated_at is not None,
    }


def list_alerts(
    store: Store, status: AlertStatus | None = None, limit: int = 100, cursor: str | None = None
) -> Page[dict[str, Any]]:
    """Newest first, a page of `limit` after `cursor`."""
    order = (Alert.starts_at, Alert.id)
    query = select(Alert).order_by(*(c.desc() for c in order)).limit(limit + 1)
    if status is not None:
        query = query.where(Alert.status == status)
    if cursor is not None:
        query = query.where(paging.before(order, paging.decode(cursor, (datetime, int))))
    with store.reading() as session:
        rows, next_cursor = paging.page(session.scalars(query).all(), limit, lambda a: (a.starts_at, a.id))
        return Page([alert_json(a) for a in rows], next_cursor)


# An alert fires minutes after the requests that tripped its rule (its windows and its `for`): the
# example requests start this much before the incident opened.
EXAMPLES_BEFORE = timedelta(minutes=15)


def _incident_json(row: Incident, members: int) -> dict[str, Any]:
    top = row.ranking[0] if row.ranking else None
    return {
        "id": row.id,
        "status": row.status,
        "title": row.title,
        "severity": row.severity,
        "opened_at": iso(row.opened_at),
        "last_alert_at": iso(row.last_alert_at),
        "resolved_at": iso(row.resolved_at),
        "alerts": members,
        "root_cause": None
        if top is None
        else {"subject": top["subject"], "alertname": top["alertname"], "score": top["score"]},
        "ticket_id": row.ticket_id,
        "trace_id": row.trace_id,
        "acknowledged_at": iso(row.acknowledged_at),
        "acknowledged_by": row.acknowledged_by,
        "assignee": row.assignee,
        "snoozed_until": iso(row.snoozed_until),
        "resolved_by": row.resolved_by,
        "muted_by": row.muted_by,
        "follows_incident_id": row.follows_incident_id,
    }


def list_incidents(
    store: Store, status: IncidentStatus | None = None, limit: int = 100, cursor: str | None = None
) -> Page[dict[str, Any]]:
    """Newest activity first, a page of `limit` after `cursor`."""
    order = (Incident.last_alert_at, Incident.id)
    query = select(Incident).order_by(*(c.desc() for c in order)).limit(limit + 1)
    if status is not None:
        query = query.where(Incident.status == status)
    if cursor is not None:
        query = query.where(paging.before(order, paging.decode(cursor, (datetime, int))))
    with store.reading() as session:
        rows, next_cursor = paging.page(
            session.scalars(query).all(), limit, lambda r: (r.last_alert_at, r.id)
        )
        counts = dict(
            session.execute(
                select(IncidentMember.incident_id, func.count())
                .where(IncidentMember.incident_id.in_([r.id for r in rows]))
                .group_by(IncidentMember.incident_id)
            ).all()
        )
        return Page([_incident_json(row, counts.get(row.id, 0)) for row in rows], next_cursor)


def incident_detail(
    store: Store,
    incident_id: int,
    sampling: Sampling,
    manual_actions: Mapping[str, list[str]] = MappingProxyType({}),
) -> dict[str, Any] | None:
    """The incident, its members with reason and confidence, its ranking, its timeline, its
    checklist (the `manual_actions` of its playbooks, by name), and its models' example requests
    from the intake's sample (`sampling`)."""
    with store.reading() as session:
        row = session.get(Incident, incident_id)
        if row is None:
            return None
        members = session.execute(
            select(IncidentMember, Alert)
            .join(Alert, Alert.id == IncidentMember.alert_id)
            .where(IncidentMember.incident_id == incident_id)
            .order_by(Alert.starts_at, Alert.id)
        ).all()
        events = session.scalars(
            select(IncidentEvent).where(IncidentEvent.incident_id == incident_id).order_by(IncidentEvent.id)
        ).all()
        detail = _incident_json(row, len(members))
        detail["members"] = [
            {
                **alert_json(alert),
                "reason": member.reason,
                "detail": member.detail,
                "confidence": member.confidence,
            }
            for member, alert in members
        ]
        detail["ranking"] = row.ranking
        detail["timeline"] = [{"at": iso(e.at), "kind": e.kind, "detail": e.detail} for e in events]
        detail["checklist"] = checklist(session, incident_id, manual_actions)
        models = sorted({alert.model_name for _, alert in members if alert.model_name})
        end = row.resolved_at or utcnow()
        start = row.opened_at - EXAMPLES_BEFORE
        detail["example_requests"] = traced_examples(session, models, start, end, sampling)
        return detail


def with_trace_links(detail: dict[str, Any], traces: Traces) -> dict[str, Any]:
    """An incident's detail with a link to its trace and to each example request's (`traces.link`;
    None without one)."""
    for by_kind in detail["example_requests"].values():
        for request in (r for requests in by_kind.values() for r in requests):
            request["url"] = traces.url(request["trace_id"])
    return {**detail, "trace_url": traces.url(detail["trace_id"])}


def incidents_of_model(
    store: Store, model_name: str, pipelines: list[str], start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Incidents with an alert about `model_name` or one of its `pipelines` that were open at some
    time in [start, end), oldest first, each with its first alert's start and arrival and its alert
    names."""
    about = Alert.model_name == model_name
    if pipelines:
        about = about | Alert.pipeline_name.in_(pipelines)
    with store.reading() as session:
        rows = session.execute(
            select(Incident, func.min(Alert.starts_at), func.min(Alert.received_at))
            .join(IncidentMember, IncidentMember.incident_id == Incident.id)
            .join(Alert, Alert.id == IncidentMember.alert_id)
            .where(
                about,
                Incident.opened_at < end,
                (Incident.resolved_at.is_(None)) | (Incident.resolved_at >= start),
            )
            .group_by(Incident.id)
            .order_by(Incident.opened_at, Incident.id)
        ).all()
        names = session.execute(
            select(IncidentMember.incident_id, Alert.alertname)
            .join(Alert, Alert.id == IncidentMember.alert_id)
            .where(IncidentMember.incident_id.in_([row[0].id for row in rows]))
        ).all()
        found = []
        for incident, first_alert_at, first_received_at in rows:
            detail = _incident_json(incident, sum(1 for i, _ in names if i == incident.id))
            detail["first_alert_at"] = iso(first_alert_at)
            detail["first_received_at"] = iso(first_received_at)
            detail["alertnames"] = sorted({n for i, n in names if i == incident.id})
            found.append(detail)
        return found
