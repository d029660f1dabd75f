"""The read side of the remediation audit trail, shared by the HTTP API, the CLI and the report."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from watchkeeper.store import Store
from watchkeeper.store.incidents import iso
from watchkeeper.store.schema import ControlFlag, RemediationAction, utcnow

FINISHED = ("succeeded", "failed")
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
    }


def list_actions(store: Store, incident_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Newest first."""
    query = select(RemediationAction).order_by(RemediationAction.id.desc()).limit(limit)
    if incident_id is not None:
        query = query.where(RemediationAction.incident_id == incident_id)
    with store.reading() as session:
        return [action_json(r) for r in session.scalars(query)]


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
