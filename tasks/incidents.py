"""Stored alerts into stored incidents: the handle-alerts flow's correlation step.

One transaction correlates every alert not yet correlated, oldest first, against the incidents
active around them, and resolves the incidents whose alerts have all resolved. Runs are serialised
by the store (SQLite's write lock; a transaction-scoped advisory lock on PostgreSQL), so two runs
started close together never correlate the same alert twice, and a run that failed halfway left
nothing behind for the next one to trip over.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import and_, exists, or_, select, text
from sqlalchemy.orm import Session

from tasks.correlation import AlertEvent, CorrelationRules, Correlator, IncidentState, rank_root_causes
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.severity import highest, level
from watchkeeper.store import Store
from watchkeeper.store.schema import (
    Alert,
    AlertStatus,
    Incident,
    IncidentEvent,
    IncidentMember,
    IncidentStatus,
)
from watchkeeper.times import utcnow
from watchkeeper.tracing import current_trace_id

# Arbitrary constant naming the correlation lock on PostgreSQL.
CORRELATION_LOCK = 7_246_001
MAX_ALERTS_PER_RUN = 10_000


def topology_service(config: WatchkeeperConfig, labels: dict[str, str]) -> str | None:
    """The topology service an alert is about: its model's, pipeline's or feature store's (named, or
    found by its exporter's instance), else its `service` label."""
    model = config.models_by_name.get(labels.get("model_name", ""))
    if model is not None and model.service is not None:
        return model.service
    pipeline = config.pipelines_by_name.get(labels.get("pipeline_name", ""))
    if pipeline is not None and pipeline.service is not None:
        return pipeline.service
    for feature_store in config.feature_stores:
        named = feature_store.name == labels.get("feature_store")
        exported = feature_store.instance is not None and feature_store.instance == labels.get("instance")
        if (named or exported) and feature_store.service is not None:
            return feature_store.service
    return labels.get("service")


def alert_event(config: WatchkeeperConfig, alert: Alert) -> AlertEvent:
    return AlertEvent(
        id=alert.id,
        name=alert.alertname,
        service=topology_service(config, alert.labels),
        starts_at=alert.starts_at,
        labels=alert.labels,
        annotations=alert.annotations,
        strength=level(alert.severity).strength,
    )


@dataclass
class CorrelationOutcome:
    correlated: int = 0
    opened: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    reopened: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def lock_incidents(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CORRELATION_LOCK})


def _active_incidents(
    session: Session, config: WatchkeeperConfig, since: datetime
) -> tuple[dict[int, Incident], list[IncidentState]]:
    """Incidents a pending alert could join, with their members: a bounded, indexed read. One
    resolved by hand is not among them: a person said it is over, so what fires next is new."""
    rows = session.scalars(
        select(Incident).where(
            Incident.last_alert_at >= since,
            or_(
                Incident.status == IncidentStatus.OPEN,
                and_(Incident.resolved_at >= since, Incident.resolved_by.is_(None)),
            ),
        )
    ).all()
    incidents = {row.id: row for row in rows}
    members: dict[int, list[AlertEvent]] = {row.id: [] for row in rows}
    if incidents:
        for incident_id, alert in session.execute(
            select(IncidentMember.incident_id, Alert)
            .join(Alert, Alert.id == IncidentMember.alert_id)
            .where(IncidentMember.incident_id.in_(list(incidents)))
            .order_by(Alert.starts_at, Alert.id)
        ):
            members[incident_id].append(alert_event(config, alert))
    states = [
        IncidentState(
            id=row.id,
            first_at=row.opened_at,
            last_at=row.last_alert_at,
            resolved_at=row.resolved_at if row.status == IncidentStatus.RESOLVED else None,
            members=members[row.id],
        )
        for row in rows
    ]
    return incidents, states


def _resolved_by_hand_before(session: Session, alert_id: int) -> int | None:
    """The latest incident resolved by hand that had this alert (its fingerprint) as a member."""
    fingerprint = select(Alert.fingerprint).where(Alert.id == alert_id).scalar_subquery()
    return session.scalar(
        select(Incident.id)
        .join(IncidentMember, IncidentMember.incident_id == Incident.id)
        .join(Alert, Alert.id == IncidentMember.alert_id)
        .where(Alert.fingerprint == fingerprint, Incident.resolved_by.is_not(None))
        .order_by(Incident.id.desc())
        .limit(1)
    )


def _open_incident(session: Session, incidents: dict[int, Incident], alert: AlertEvent) -> int:
    row = Incident(
        status=IncidentStatus.OPEN,
        title=alert.name,
        opened_at=alert.starts_at,
        last_alert_at=alert.starts_at,
        trace_id=current_trace_id(),  # the notification's, whose run opens it
        follows_incident_id=_resolved_by_hand_before(session, alert.id),
    )
    session.add(row)
    session.flush()
    incidents[row.id] = row
    session.add(IncidentEvent(incident_id=row.id, kind="opened", detail={"alert_id": alert.id}))
    return row.id


def _describe(
    session: Session, row: Incident, state: IncidentState, rules: CorrelationRules, severities: dict[int, str]
) -> None:
    """Refresh an incident's title, severity, span and root-cause ranking from its members."""
    ranking = rank_root_causes(state.members, rules)
    top = ranking[0]
    if row.root_cause_alert_id != top.alert_id:
        session.add(
            IncidentEvent(
                incident_id=row.id,
                kind="root_cause",
                detail={"subject": top.subject, "alert_id": top.alert_id, "score": top.score},
            )
        )
    row.ranking = [c.as_json() for c in ranking[:10]]
    row.root_cause_alert_id, row.root_cause_service, row.root_cause_confidence = (
        top.alert_id,
        top.subject,
        top.score,
    )
    row.last_alert_at = state.last_at
    row.opened_at = min(row.opened_at, state.first_at)
    known = [severities[m.id] for m in state.members if severities.get(m.id)]
    row.severity = highest(known)
    others = len(state.members) - 1
    row.title = f"{top.alertname} on {top.subject}" + (f" (+{others} alerts)" if others else "")


def _correlate(session: Session, config: WatchkeeperConfig, rules: CorrelationRules) -> CorrelationOutcome:
    outcome = CorrelationOutcome()
    pending = session.scalars(
        select(Alert)
        .where(Alert.correlated_at.is_(None))
        .order_by(Alert.starts_at, Alert.id)
        .limit(MAX_ALERTS_PER_RUN)
    ).all()
    if not pending:
        return outcome
    incidents, states = _active_incidents(
        session, config, pending[0].starts_at - rules.window - rules.quiet_period
    )
    correlator = Correlator(rules, states, lambda alert: _open_incident(session, incidents, alert))
    events = [alert_event(config, alert) for alert in pending]
    now = utcnow()
    touched: set[int] = set()
    for alert, membership in zip(pending, correlator.add_all(events), strict=True):
        session.add(
            IncidentMember(
                incident_id=membership.incident_id,
                alert_id=alert.id,
                reason=membership.reason,
                detail=membership.detail,
                confidence=membership.confidence,
                joined_at=now,
            )
        )
        if not membership.opened:
            session.add(
                IncidentEvent(
                    incident_id=membership.incident_id,
                    kind="alert_joined",
                    detail={"alert_id": alert.id, "reason": membership.reason, "detail": membership.detail},
                )
            )
        alert.correlated_at = now
        touched.add(membership.incident_id)
        (outcome.opened if membership.opened else outcome.updated).append(membership.incident_id)
    severities = {
        alert_id: severity
        for alert_id, severity in session.execute(
            select(IncidentMember.alert_id, Alert.severity)
            .join(Alert, Alert.id == IncidentMember.alert_id)
            .where(IncidentMember.incident_id.in_(list(touched)))
        )
    }
    for incident_id in sorted(touched):
        row = incidents[incident_id]
        row.revision = Incident.revision + 1
        if row.status == IncidentStatus.RESOLVED:
            row.status, row.resolved_at = IncidentStatus.OPEN, None
            session.add(IncidentEvent(incident_id=incident_id, kind="reopened", detail={}))
            outcome.reopened.append(incident_id)
        _describe(session, row, correlator.incidents[incident_id], rules, severities)
    outcome.correlated = len(pending)
    outcome.opened = sorted(set(outcome.opened))
    outcome.updated = sorted(set(outcome.updated) - set(outcome.opened))
    return outcome


def _resolve_quiet_incidents(session: Session, outcome: CorrelationOutcome) -> None:
    """Resolve every open incident none of whose alerts is still firing."""
    firing_member = (
        select(IncidentMember.alert_id)
        .join(Alert, Alert.id == IncidentMember.alert_id)
        .where(IncidentMember.incident_id == Incident.id, Alert.status == AlertStatus.FIRING)
    )
    for row in session.scalars(
        select(Incident).where(Incident.status == IncidentStatus.OPEN, ~exists(firing_member))
    ):
        ends = session.scalars(
            select(Alert)
            .join(IncidentMember, IncidentMember.alert_id == Alert.id)
            .where(IncidentMember.incident_id == row.id)
        ).all()
        if not ends:
            continue
        row.status = IncidentStatus.RESOLVED
        row.revision = Incident.revision + 1
        row.resolved_at = max(a.ends_at or a.resolved_at or utcnow() for a in ends)
        session.add(IncidentEvent(incident_id=row.id, kind="resolved", detail={"alerts": len(ends)}))
        outcome.resolved.append(row.id)


def correlate_pending_alerts(store: Store, config: WatchkeeperConfig) -> CorrelationOutcome:
    rules = CorrelationRules.from_config(config)
    with store.writing() as session:
        lock_incidents(session)
        outcome = _correlate(session, config, rules)
        _resolve_quiet_incidents(session, outcome)
        return outcome


@task(name="correlate-alerts", retries=3, retry_delay_seconds=[1, 5, 15], cache_policy=NO_CACHE)
def correlate_alerts(store: Store, config: WatchkeeperConfig) -> CorrelationOutcome:
    """Group new alerts into incidents, rank root causes, resolve quiet incidents."""
    return correlate_pending_alerts(store, config)
