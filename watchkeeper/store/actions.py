"""The read side of the remediation audit trail, shared by the HTTP API, the CLI and the report."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from watchkeeper.store import Store, paging
from watchkeeper.store.incidents import iso
from watchkeeper.store.paging import Page
from watchkeeper.store.remediation import ActionStatus, RemediationAction, settle_approval
from watchkeeper.store.schema import ControlFlag, IncidentEvent
from watchkeeper.times import utcnow

FINISHED = (ActionStatus.SUCCEEDED, ActionStatus.FAILED, ActionStatus.OUTCOME_UNKNOWN)
KILL_SWITCH = "remediation_enabled"


def remediation_on(session: Session) -> bool:
    flag = session.get(ControlFlag, KILL_SWITCH)
    return True if flag is None else bool(flag.value)


def set_remediation(store: Store, on: bool, by: str) -> None:
    with store.writing() as session:
        flag = session.get(ControlFlag, KILL_SWITCH)
        if flag is None:
            session.add(ControlFlag(name=KILL_SWITCH, value=on, changed_by=by))
        else:
            flag.value, flag.changed_by, flag.changed_at = on, by, utcnow()


@dataclass(frozen=True)
class SettledApproval:
    verdict: str
    rows: list[int]
    runs: list[str]


def answer_approval(store: Store, incident_id: int, approved: bool, comment: str, by: str) -> SettledApproval:
    """An operator's answer for the incident's rows awaiting approval, settled by compare-and-set;
    returns the rows this answer settled and the runs paused for them."""
    verdict = ActionStatus.APPROVED if approved else ActionStatus.REJECTED
    note = f"{verdict} by {by}" + (f": {comment}" if comment else "")
    with store.writing() as session:
        waiting = session.scalars(
            select(RemediationAction).where(
                RemediationAction.incident_id == incident_id,
                RemediationAction.status == ActionStatus.AWAITING_APPROVAL,
            )
        ).all()
        runs = sorted({r.flow_run_id for r in waiting if r.flow_run_id})
        settled = settle_approval(session, [r.id for r in waiting], verdict, note, by)
        if settled:
            detail = {"by": by, "actions": settled, "comment": comment}
            session.add(IncidentEvent(incident_id=incident_id, kind=str(verdict), detail=detail))
    return SettledApproval(verdict.value, settled, runs if settled else [])


def action_json(row: RemediationAction) -> dict[str, Any]:
    return {
        "id": row.id,
        "incident_id": row.incident_id,
        "alert_id": row.alert_id,
        "playbook": row.playbook,
        "action": row.action,
        "target": row.target,
        "decision": row.decision,
        "reason": row.reason,
        "status": row.status,
        "inputs": row.inputs,
        "result": row.result,
        "flow_run_id": row.flow_run_id,
        "decided_at": iso(row.decided_at),
        "finished_at": iso(row.finished_at),
        "attempts": row.attempts,
        "calls": row.calls or [],
        "plan": row.plan,
        "settled_by": row.settled_by,
    }


def list_actions(
    store: Store, incident_id: int | None = None, limit: int = 100, cursor: str | None = None
) -> Page[dict[str, Any]]:
    """Newest first, a page of `limit` after `cursor`."""
    query = select(RemediationAction).order_by(RemediationAction.id.desc()).limit(limit + 1)
    if incident_id is not None:
        query = query.where(RemediationAction.incident_id == incident_id)
    if cursor is not None:
        query = query.where(paging.before((RemediationAction.id,), paging.decode(cursor, (int,))))
    with store.reading() as session:
        rows, next_cursor = paging.page(session.scalars(query).all(), limit, lambda r: (r.id,))
        return Page([action_json(r) for r in rows], next_cursor)


def automation_report(store: Store, hours: int = 24) -> dict[str, Any]:
    """Success rate, a breakdown by action and decision, and the most recent actions."""
    since = utcnow() - timedelta(hours=hours)
    with store.reading() as session:
        rows = session.scalars(
            select(RemediationAction)
            .where(RemediationAction.decided_at >= since)
            .order_by(RemediationAction.id)
        ).all()
        finished = [r for r in rows if r.status in FINISHED]
        by_action: dict[str, Counter[str]] = defaultdict(Counter)
        for row in rows:
            by_action[row.action][row.decision] += 1
            if row.status in FINISHED:
                by_action[row.action][row.status] += 1
        succeeded = sum(r.status == "succeeded" for r in finished)
        return {
            "hours": hours,
            "since": since.isoformat(),
            "decisions": len(rows),
            "executed": len(finished),
            "succeeded": succeeded,
            "success_rate": round(succeeded / len(finished), 4) if finished else None,
            "by_action": {action: dict(counts) for action, counts in sorted(by_action.items())},
            "recent": [action_json(r) for r in rows[-10:][::-1]],
        }


def actions_of_incidents(store: Store, incident_ids: list[int]) -> list[dict[str, Any]]:
    """The remediation decisions of these incidents, in the order they were made."""
    with store.reading() as session:
        rows = session.scalars(
            select(RemediationAction)
            .where(RemediationAction.incident_id.in_(incident_ids))
            .order_by(RemediationAction.id)
        ).all()
        return [action_json(r) for r in rows]
