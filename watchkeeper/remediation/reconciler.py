"""What dead runs left, finished: owed incidents, decided rows nobody claimed, claims whose holder
died mid-call, approvals nobody answered. Safe beside live runs: every step is a claim."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.incidents import correlate_pending_alerts
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.notifications.senders import IncidentSummary
from watchkeeper.remediation.actions import ACTIONS
from watchkeeper.remediation.actions.kind import ActionContext
from watchkeeper.remediation.decisions import handle_incident, owed_incidents, summary_of
from watchkeeper.remediation.execution import execute_action, run_claimed
from watchkeeper.remediation.silences import keep_mutes
from watchkeeper.store import Store, lifecycle
from watchkeeper.store.remediation import (
    ActionStatus,
    awaiting_since,
    claim_budget,
    mark_outcome_unknown,
    settle_approval,
    stale_claims,
    take_over,
    unclaimed,
)
from watchkeeper.store.schema import Incident, IncidentEvent, IncidentStatus
from watchkeeper.times import utcnow


@dataclass
class Reconciliation:
    handled: list[int] = field(default_factory=list)
    executed: dict[int, str] = field(default_factory=dict)
    resent: dict[int, str] = field(default_factory=dict)
    outcome_unknown: list[int] = field(default_factory=list)
    timed_out: list[int] = field(default_factory=list)
    escalated: dict[int, str] = field(default_factory=dict)
    mutes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def anything(self) -> bool:
        work = (
            self.handled,
            self.executed,
            self.resent,
            self.outcome_unknown,
            self.timed_out,
            self.escalated,
        )
        return any(work) or any(self.mutes.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "handled": self.handled,
            "executed": self.executed,
            "resent": self.resent,
            "outcome_unknown": self.outcome_unknown,
            "timed_out": self.timed_out,
            "escalated": self.escalated,
            "mutes": self.mutes,
        }


def stale_after(config: WatchkeeperConfig) -> timedelta:
    """How long a live claimant can hold a row: plan and call, each bounded by the action timeout,
    with a margin. A claim older than this belongs to a run that died."""
    return claim_budget(config.remediation.action_timeout, 1, []) + timedelta(seconds=60)


def _summary(session: Session, incident_id: int | None) -> IncidentSummary:
    incident = session.get(Incident, incident_id) if incident_id is not None else None
    return summary_of(incident) if incident else IncidentSummary(None, "remediation", None, None)


def escalate(config: WatchkeeperConfig, playbook_name: str, summary: IncidentSummary) -> str | None:
    """Page the playbook's escalation target about the incident; returns the target's name."""
    playbook = next((p for p in config.remediation.playbooks if p.name == playbook_name), None)
    if playbook is None or playbook.escalate_to is None:
        return None
    context = ActionContext(config, summary, config.remediation.action_timeout.total_seconds())
    ACTIONS["notify"].execute({"target": playbook.escalate_to}, {}, context)
    return playbook.escalate_to


def time_out_approvals(
    store: Store, config: WatchkeeperConfig, row_ids: list[int], playbook_name: str, summary: IncidentSummary
) -> list[int]:
    """Time out the rows still awaiting approval; only the caller that settled them escalates."""
    playbook = next((p for p in config.remediation.playbooks if p.name == playbook_name), None)
    target = playbook.escalate_to if playbook else None
    note = "approval timed out; nothing was done" + (f"; escalated to {target}" if target else "")
    with store.writing() as session:
        settled = settle_approval(session, row_ids, ActionStatus.TIMED_OUT, note, by="timeout")
    if settled and target:
        try:
            escalate(config, playbook_name, summary)
        except Exception as exc:  # noqa: BLE001 - the timeout stands; the failed escalation is on the record
            with store.writing() as session:
                session.add(
                    IncidentEvent(
                        incident_id=summary.id,
                        kind="escalation_failed",
                        detail={"target": target, "error": f"{type(exc).__name__}: {exc}"[:500]},
                    )
                )
    return settled


def escalate_unacknowledged(store: Store, config: WatchkeeperConfig, now: datetime) -> dict[int, str]:
    """Page each playbook's `escalate_to` once for its incidents nobody acknowledged within its
    `escalation_time` (not while snoozed; acknowledging or resolving stops it). The page goes only
    after winning the incident's escalation claim; a failed one gives the claim back, so the next
    reconciliation tries again. Returns incident -> target paged (or the error)."""
    timed = {p.name: p for p in config.remediation.playbooks if p.escalation_time is not None}
    if not timed:
        return {}
    with store.reading() as session:
        waiting = session.execute(
            select(Incident.id, Incident.opened_at, IncidentEvent.detail)
            .join(IncidentEvent, IncidentEvent.incident_id == Incident.id)
            .where(
                IncidentEvent.kind == "playbook",
                Incident.status == IncidentStatus.OPEN,
                Incident.acknowledged_at.is_(None),
                Incident.escalated_at.is_(None),
            )
        ).all()
        due = [
            (incident_id, playbook.name)
            for incident_id, opened_at, detail in waiting
            if (playbook := timed.get(detail.get("playbook", ""))) is not None
            and opened_at + (playbook.escalation_time or timedelta(0)) <= now
        ]
        summaries = {incident_id: _summary(session, incident_id) for incident_id, _ in due}
    paged: dict[int, str] = {}
    for incident_id, playbook_name in dict(due).items():
        if not lifecycle.claim_escalation(store, incident_id, now):
            continue
        target = timed[playbook_name].escalate_to or ""
        try:
            escalate(config, playbook_name, summaries[incident_id])
            error = None
        except Exception as exc:  # noqa: BLE001 - recorded; the claim is given back and tried again
            error = f"{type(exc).__name__}: {exc}"[:500]
        lifecycle.record_escalation(store, incident_id, target, error)
        paged[incident_id] = target if error is None else f"failed: {error}"
    return paged


def reconcile(
    store: Store,
    config: WatchkeeperConfig,
    claimant: str,
    alertmanager_url: str | None = None,
    now: datetime | None = None,
    grace: timedelta = timedelta(seconds=60),
) -> Reconciliation:
    """Finish what dead runs left: owed incidents, decided rows nobody claimed, claims whose holder
    died mid-call, approvals nobody answered. Safe beside live runs: every step is a claim."""
    now = now or utcnow()
    done = Reconciliation()
    for incident_id in owed_incidents(store):
        handle_incident(store, config, incident_id, None)
        done.handled.append(incident_id)
    with store.reading() as session:
        orphans = [(r.id, r.incident_id) for r in unclaimed(session, now - grace)]
        stale = [
            (r.id, r.incident_id, r.action, dict(r.inputs), r.claimed_by)
            for r in stale_claims(session, now - stale_after(config))
        ]
        waiting = awaiting_since(session, now - grace)
        summaries = {
            i: _summary(session, i)
            for i in {*(o[1] for o in orphans), *(s[1] for s in stale), *(w.incident_id for w in waiting)}
        }
        timeouts = {p.name: p.approval_timeout for p in config.remediation.playbooks}
        overdue: dict[tuple[str, int | None], list[int]] = {}
        for row in waiting:
            if row.decided_at + timeouts.get(row.playbook, timedelta(0)) + grace < now:
                overdue.setdefault((row.playbook, row.incident_id), []).append(row.id)
    for row_id, incident_id in orphans:
        try:
            done.executed[row_id] = str(
                execute_action(
                    store, config, row_id, summaries[incident_id], claimant, alertmanager_url
                ).outcome
            )
        except Exception as exc:  # noqa: BLE001 - recorded on the row as failed; the reconciler goes on
            done.executed[row_id] = f"failed: {type(exc).__name__}"
    context = ActionContext(
        config, IncidentSummary(None, "", None, None), config.remediation.action_timeout.total_seconds()
    )
    for row_id, incident_id, action, inputs, holder in stale:
        if ACTIONS[action].idempotent(inputs, context):
            with store.writing() as session:
                won = take_over(session, row_id, holder, claimant, now)
            if won is None:
                continue
            try:
                done.resent[row_id] = str(run_claimed(store, config, won, summaries[incident_id]).outcome)
            except Exception as exc:  # noqa: BLE001 - recorded on the row as failed
                done.resent[row_id] = f"failed: {type(exc).__name__}"
            continue
        note = (
            f"its claimant {holder} stopped before recording a result; whether {action} reached its "
            "target is unknown, and it is not re-sent because it is not idempotent: check the target"
        )
        with store.writing() as session:
            if mark_outcome_unknown(session, row_id, holder, note, now):
                done.outcome_unknown.append(row_id)
                if incident_id is not None:
                    session.add(
                        IncidentEvent(
                            incident_id=incident_id,
                            kind="action_outcome_unknown",
                            detail={"action_id": row_id, "action": action},
                        )
                    )
    for (playbook_name, incident_id), row_ids in overdue.items():
        done.timed_out += time_out_approvals(store, config, row_ids, playbook_name, summaries[incident_id])
    done.escalated = escalate_unacknowledged(store, config, now)
    done.mutes = keep_mutes(
        store,
        alertmanager_url,
        config.remediation.action_timeout.total_seconds(),
        lambda: correlate_pending_alerts(store, config),
        now,
    )
    return done
