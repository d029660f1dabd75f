"""What the people on call do to an incident: acknowledge it, assign it, leave a note, snooze
Watchkeeper's own repeat pages, resolve it by hand with a reason, tick a step of its checklist.

Correlation opens and resolves incidents from their alerts (`tasks/incidents.py`); this module owns
the transitions people make. Each is one compare-and-set (an UPDATE whose WHERE is the state it
expects), recorded on the incident's timeline with who made it, in the same transaction: of two
people acknowledging at once, one wins and the other is told who did. An incident resolved by hand
is not reopened by its alerts: one that fires again opens a new incident that follows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import null, or_, select, update
from sqlalchemy.orm import Session

from watchkeeper.store import Store
from watchkeeper.store.remediation import ActionStatus, RemediationAction, settle_approval
from watchkeeper.store.schema import (
    Alert,
    AlertStatus,
    Incident,
    IncidentEvent,
    IncidentMember,
    IncidentStatus,
)
from watchkeeper.times import utcnow


class LifecycleError(Exception):
    """A transition refused: `status` is the HTTP answer (404 no such incident, 409 its state)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Transition:
    incident_id: int
    event: str
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"incident": self.incident_id, "event": self.event, **self.detail}


def _record(session: Session, incident_id: int, kind: str, detail: dict[str, Any]) -> Transition:
    session.add(IncidentEvent(incident_id=incident_id, kind=kind, detail=detail))
    return Transition(incident_id, kind, detail)


def _refusal(session: Session, incident_id: int, wanted: str) -> LifecycleError:
    """Why a compare-and-set on an incident found nothing to change."""
    row = session.get(Incident, incident_id)
    if row is None:
        return LifecycleError(404, f"no incident {incident_id}")
    if row.status == IncidentStatus.RESOLVED:
        by = f" by {row.resolved_by}" if row.resolved_by else " (its alerts stopped)"
        return LifecycleError(409, f"incident {incident_id} is resolved{by}: it cannot be {wanted}")
    if wanted == "acknowledged" and row.acknowledged_by is not None:
        at = row.acknowledged_at.isoformat() if row.acknowledged_at else "?"
        return LifecycleError(
            409, f"incident {incident_id} was already acknowledged by {row.acknowledged_by} at {at}"
        )
    return LifecycleError(409, f"incident {incident_id} cannot be {wanted} now")


def _open(incident_id: int) -> Any:
    return update(Incident).where(Incident.id == incident_id, Incident.status == IncidentStatus.OPEN)


def acknowledge(store: Store, incident_id: int, by: str) -> Transition:
    """Someone has it: Watchkeeper's own repeat pages and escalations for it stop."""
    now = utcnow()
    with store.writing() as session:
        changed = session.execute(
            _open(incident_id)
            .where(Incident.acknowledged_at.is_(None))
            .values(acknowledged_at=now, acknowledged_by=by)
        ).rowcount
        if not changed:
            raise _refusal(session, incident_id, "acknowledged")
        return _record(session, incident_id, "acknowledged", {"by": by})


def assign(store: Store, incident_id: int, assignee: str, by: str) -> Transition:
    with store.writing() as session:
        if not session.execute(_open(incident_id).values(assignee=assignee)).rowcount:
            raise _refusal(session, incident_id, "assigned")
        return _record(session, incident_id, "assigned", {"assignee": assignee, "by": by})


def note(store: Store, incident_id: int, text: str, by: str) -> Transition:
    """A note for the next shift: on an open incident or a resolved one."""
    with store.writing() as session:
        if session.get(Incident, incident_id) is None:
            raise LifecycleError(404, f"no incident {incident_id}")
        return _record(session, incident_id, "note", {"text": text, "by": by})


def snooze(store: Store, incident_id: int, length: timedelta, by: str) -> Transition:
    """Watchkeeper's own repeat pages and escalations wait until then."""
    until = utcnow() + length
    with store.writing() as session:
        if not session.execute(_open(incident_id).values(snoozed_until=until)).rowcount:
            raise _refusal(session, incident_id, "snoozed")
        return _record(session, incident_id, "snoozed", {"until": until.isoformat(), "by": by})


def resolve(store: Store, incident_id: int, reason: str, by: str) -> Transition:
    """Resolved by hand, with a reason. Actions still awaiting approval are rejected with it (an
    approval racing this resolve either settles them first, and they run, or finds none)."""
    now = utcnow()
    with store.writing() as session:
        changed = session.execute(
            _open(incident_id).values(
                status=IncidentStatus.RESOLVED,
                resolved_at=now,
                resolved_by=by,
                revision=Incident.revision + 1,
            )
        ).rowcount
        if not changed:
            raise _refusal(session, incident_id, "resolved")
        waiting = session.scalars(
            select(RemediationAction.id).where(
                RemediationAction.incident_id == incident_id,
                RemediationAction.status == ActionStatus.AWAITING_APPROVAL,
            )
        ).all()
        rejected = settle_approval(session, waiting, ActionStatus.REJECTED, f"incident resolved by {by}", by)
        detail = {"by": by, "reason": reason, "rejected_actions": rejected}
        return _record(session, incident_id, "resolved_by_hand", detail)


def tick(
    store: Store, incident_id: int, step: str, by: str, manual_actions: dict[str, list[str]]
) -> Transition:
    """A step of the incident's checklist (its playbooks' `manual_actions`), done."""
    with store.writing() as session:
        if session.get(Incident, incident_id) is None:
            raise LifecycleError(404, f"no incident {incident_id}")
        steps = [s["step"] for s in checklist(session, incident_id, manual_actions)]
        if step not in steps:
            listed = ", ".join(repr(s) for s in steps) or "none: its playbook leaves no step to people"
            raise LifecycleError(409, f"{step!r} is not on incident {incident_id}'s checklist ({listed})")
        return _record(session, incident_id, "step_done", {"step": step, "by": by})


def claim_escalation(store: Store, incident_id: int, now: datetime) -> bool:
    """Whether this caller pages the escalation: the incident is open, nobody acknowledged it, it is
    not snoozed, and no one claimed its escalation before (of two reconcilers, one wins)."""
    with store.writing() as session:
        claimed = session.execute(
            _open(incident_id)
            .where(
                Incident.acknowledged_at.is_(None),
                Incident.escalated_at.is_(None),
                or_(Incident.snoozed_until.is_(None), Incident.snoozed_until <= now),
            )
            .values(escalated_at=now)
        ).rowcount
        return bool(claimed)


def record_escalation(store: Store, incident_id: int, target: str, error: str | None) -> None:
    """The page's outcome on the timeline; a failed page gives the claim back, to be tried again."""
    with store.writing() as session:
        if error is None:
            _record(session, incident_id, "escalated", {"target": target})
            return
        session.execute(update(Incident).where(Incident.id == incident_id).values(escalated_at=None))
        _record(session, incident_id, "escalation_failed", {"target": target, "error": error})


def claim_mute(store: Store, incident_id: int, by: str, lease: timedelta) -> list[tuple[str, dict[str, str]]]:
    """Claim the incident's mute (of two people muting, one silences); its firing alerts'
    fingerprints and labels, to be silenced. The claim holds the mute lease too, so a reconciler
    does not silence them again as alerts that joined later."""
    with store.writing() as session:
        claimed = session.execute(
            _open(incident_id)
            .where(Incident.muted_by.is_(None))
            .values(muted_by=by, silences={}, mute_lease_until=utcnow() + lease)
        ).rowcount
        if not claimed:
            row = session.get(Incident, incident_id)
            if row is not None and row.status == IncidentStatus.OPEN and row.muted_by is not None:
                raise LifecycleError(409, f"incident {incident_id} was already muted by {row.muted_by}")
            raise _refusal(session, incident_id, "muted")
        return [(a.fingerprint, dict(a.labels)) for a in _firing_members(session, incident_id)]


def release_mute(store: Store, incident_id: int) -> None:
    with store.writing() as session:
        session.execute(
            update(Incident)
            .where(Incident.id == incident_id)
            .values(muted_by=None, silences=null(), mute_lease_until=None)
        )


def record_mute(store: Store, incident_id: int, by: str, silences: dict[str, str]) -> Transition:
    with store.writing() as session:
        session.execute(
            update(Incident)
            .where(Incident.id == incident_id)
            .values(silences=silences, mute_lease_until=None)
        )
        return _record(session, incident_id, "muted", {"by": by, "silences": len(silences)})


def _muted_firing(session: Session) -> list[Any]:
    """(incident id, its silences, alert) for each firing alert of the open muted incidents."""
    return list(
        session.execute(
            select(Incident.id, Incident.silences, Alert)
            .join(IncidentMember, IncidentMember.incident_id == Incident.id)
            .join(Alert, Alert.id == IncidentMember.alert_id)
            .where(
                Incident.status == IncidentStatus.OPEN,
                Incident.muted_by.is_not(None),
                Alert.status == AlertStatus.FIRING,
            )
        )
    )


def unsilenced_members(store: Store) -> dict[int, list[tuple[str, dict[str, str]]]]:
    """Firing alerts that joined a muted open incident after it was muted, by incident."""
    found: dict[int, list[tuple[str, dict[str, str]]]] = {}
    with store.reading() as session:
        for incident_id, silences, alert in _muted_firing(session):
            if alert.fingerprint not in (silences or {}):
                found.setdefault(incident_id, []).append((alert.fingerprint, dict(alert.labels)))
    return found


def lease_mute(store: Store, incident_id: int, now: datetime, length: timedelta) -> bool:
    """Whether this caller silences the incident's newly joined alerts now (one reconciler at a
    time; a lease left by one that died expires)."""
    with store.writing() as session:
        return bool(
            session.execute(
                _open(incident_id)
                .where(or_(Incident.mute_lease_until.is_(None), Incident.mute_lease_until < now))
                .values(mute_lease_until=now + length)
            ).rowcount
        )


def add_silences(store: Store, incident_id: int, made: dict[str, str]) -> None:
    """The lease holder's new silences, kept beside the others; the lease given back."""
    with store.writing() as session:
        row = session.get(Incident, incident_id, with_for_update=True)
        if row is not None:
            row.silences = {**(row.silences or {}), **made}
            row.mute_lease_until = None
            if made:
                _record(session, incident_id, "muted_more", {"silences": len(made)})


def muted_members(store: Store) -> list[tuple[int, str]]:
    """(alert id, fingerprint) of each firing alert of the open muted incidents."""
    with store.reading() as session:
        return [(alert.id, alert.fingerprint) for _, _, alert in _muted_firing(session)]


def resolve_alerts(store: Store, alert_ids: list[int], now: datetime) -> list[int]:
    """Alerts Alertmanager no longer holds active, resolved (a silenced alert's resolution reaches
    no webhook); each only once."""
    resolved = []
    with store.writing() as session:
        for alert_id in alert_ids:
            changed = session.execute(
                update(Alert)
                .where(Alert.id == alert_id, Alert.status == AlertStatus.FIRING)
                .values(status=AlertStatus.RESOLVED, ends_at=now, resolved_at=now)
            ).rowcount
            if changed:
                resolved.append(alert_id)
    return resolved


def silences_to_expire(store: Store) -> dict[int, list[str]]:
    """The recorded silences of muted incidents that resolved and are not unmuted yet (none
    recorded when the run muting it died before recording them)."""
    with store.reading() as session:
        rows = session.execute(
            select(Incident.id, Incident.silences).where(
                Incident.status == IncidentStatus.RESOLVED,
                Incident.muted_by.is_not(None),
                Incident.silences.is_not(None),
            )
        ).all()
        return {incident_id: list((silences or {}).values()) for incident_id, silences in rows}


def record_unmute(store: Store, incident_id: int, expired: list[str]) -> None:
    """Its silences expired: none left to keep (`silences` empty, not an empty map)."""
    with store.writing() as session:
        session.execute(update(Incident).where(Incident.id == incident_id).values(silences=null()))
        _record(session, incident_id, "unmuted", {"expired_silences": len(expired)})


def _firing_members(session: Session, incident_id: int) -> list[Alert]:
    return list(
        session.scalars(
            select(Alert)
            .join(IncidentMember, IncidentMember.alert_id == Alert.id)
            .where(IncidentMember.incident_id == incident_id, Alert.status == AlertStatus.FIRING)
            .order_by(Alert.id)
        )
    )


def checklist(
    session: Session, incident_id: int, manual_actions: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """The steps its playbooks (`manual_actions` by playbook name) leave to people, each with who
    ticked it and when."""
    events = session.scalars(
        select(IncidentEvent)
        .where(IncidentEvent.incident_id == incident_id, IncidentEvent.kind.in_(("playbook", "step_done")))
        .order_by(IncidentEvent.id)
    ).all()
    steps: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.kind == "playbook":
            for step in manual_actions.get(event.detail.get("playbook", ""), []):
                steps.setdefault(step, {"step": step, "done_by": None, "done_at": None})
    for event in events:
        if event.kind == "step_done" and event.detail.get("step") in steps:
            steps[event.detail["step"]] |= {
                "done_by": event.detail.get("by"),
                "done_at": event.at.isoformat(),
            }
    return list(steps.values())
