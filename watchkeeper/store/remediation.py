"""The one owner of remediation state: an action's statuses, their transitions, and claims.

Every change of an action's status is one conditional UPDATE (compare and set):
`UPDATE remediation_actions SET status = :to WHERE id = :id AND status IN (:from...)`, and the
caller acts only when it changed the row. PostgreSQL re-checks the WHERE clause after waiting for a
concurrent writer's lock and SQLite serialises writers, so of any number of runs, retries and
replicas racing for one row exactly one wins. Only the winner of a claim (`running`, with its
`claimed_by`) calls the outside world, and every such call is appended to the row's `calls`, so
the audit trail shows exactly what production saw.

    decided run ──▶ pending ──claim──▶ running ──▶ succeeded
                       │                 │  ▲ └──▶ failed ──(the claimant's own retry)──┘
                       │                 │  └─ a stale claim taken over (idempotent actions only)
                       │                 └──▶ outcome_unknown (its claimant died mid-call)
                       └──▶ skipped (kill switch, silence, maintenance window at claim time)
    needs approval ──▶ awaiting_approval ──▶ approved ──claim──▶ running ...
                                         ├─▶ rejected
                                         └─▶ timed_out
    dry run or skip ──▶ not_run
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from watchkeeper.store.schema import Base, BigId, UTCDateTime
from watchkeeper.times import utcnow


class ActionStatus(StrEnum):
    PENDING = "pending"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    NOT_RUN = "not_run"
    OUTCOME_UNKNOWN = "outcome_unknown"


class Decision(StrEnum):
    RUN = "run"
    DRY_RUN = "dry_run"
    SKIP = "skip"
    NEEDS_APPROVAL = "needs_approval"


S = ActionStatus
ALLOWED: dict[ActionStatus, frozenset[ActionStatus]] = {
    S.PENDING: frozenset({S.RUNNING, S.SKIPPED}),
    S.AWAITING_APPROVAL: frozenset({S.APPROVED, S.REJECTED, S.TIMED_OUT}),
    S.APPROVED: frozenset({S.RUNNING, S.SKIPPED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.OUTCOME_UNKNOWN, S.RUNNING}),
    S.FAILED: frozenset({S.RUNNING}),
    S.REJECTED: frozenset(),
    S.TIMED_OUT: frozenset(),
    S.SUCCEEDED: frozenset(),
    S.SKIPPED: frozenset(),
    S.NOT_RUN: frozenset(),
    S.OUTCOME_UNKNOWN: frozenset(),
}
INITIAL: dict[Decision, ActionStatus] = {
    Decision.RUN: S.PENDING,
    Decision.NEEDS_APPROVAL: S.AWAITING_APPROVAL,
    Decision.DRY_RUN: S.NOT_RUN,
    Decision.SKIP: S.NOT_RUN,
}
CLAIMABLE = (S.PENDING, S.APPROVED)
# What a cooldown and the hourly budget count: anything that reserved, touched or may have touched
# its target. A row awaiting approval counts too, so that approving it later cannot exceed either.
RESERVING = (
    S.PENDING,
    S.AWAITING_APPROVAL,
    S.APPROVED,
    S.RUNNING,
    S.SUCCEEDED,
    S.FAILED,
    S.OUTCOME_UNKNOWN,
)
# A follow-up row (undo, resolve the page, comment on the ticket) is keyed by its action's key and this.
REVERT_SUFFIX = "/resolved"
STATUS_LENGTH = max(len(s.value) for s in ActionStatus)
DECISION_LENGTH = max(len(d.value) for d in Decision)


def _one_of(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class RemediationAction(Base):
    """The audit trail: every remediation decision, taken or skipped, with reason, inputs and result.

    Cooldowns and hourly limits are computed from this table, so they hold across restarts and
    replicas; `idempotency_key` makes a retried flow run find its earlier decision. `status` changes
    only through the transitions of this module.
    """

    __tablename__ = "remediation_actions"
    __table_args__ = (
        Index("ix_remediation_action_target", "action", "target", "decided_at"),
        Index("ix_remediation_incident", "incident_id"),
        Index("ix_remediation_status", "status", "decided_at"),
        CheckConstraint(_one_of("status", ActionStatus), name="ck_remediation_status"),
        CheckConstraint(_one_of("decision", Decision), name="ck_remediation_decision"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(256), unique=True)
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"))
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id"))
    playbook: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    decision: Mapped[str] = mapped_column(String(DECISION_LENGTH))
    reason: Mapped[str] = mapped_column(Text)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(STATUS_LENGTH))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(128), doc="the run (and attempt) executing it")
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=list, doc="each call made")
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON, doc="computed once before the first call")
    settled_by: Mapped[str | None] = mapped_column(String(128), doc="who approved or rejected it")
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IllegalTransition(ValueError):
    pass


def _check(frm: Iterable[ActionStatus], to: ActionStatus) -> tuple[ActionStatus, ...]:
    sources = tuple(frm)
    for source in sources:
        if to not in ALLOWED[source]:
            raise IllegalTransition(f"an action cannot go from {source} to {to}")
    return sources


def transition(
    session: Session,
    row_id: int,
    frm: Iterable[ActionStatus],
    to: ActionStatus,
    *conditions: Any,
    **values: Any,
) -> bool:
    """Compare and set: move the row to `to` only if its status is one of `frm` (and `conditions`
    hold). True when this call changed the row."""
    sources = _check(frm, to)
    changed = session.execute(
        update(RemediationAction)
        .where(RemediationAction.id == row_id, RemediationAction.status.in_(sources), *conditions)
        .values(status=to, **values)
        .execution_options(synchronize_session=False)
    )
    return changed.rowcount == 1


@dataclass(frozen=True)
class Claim:
    """A won claim: the row's action, inputs and plan, for its claimant to execute."""

    row_id: int
    claimant: str
    action: str
    inputs: dict[str, Any]
    plan: dict[str, Any] | None
    attempt: int
    alert_id: int | None
    incident_id: int | None


def claim(
    session: Session, row_id: int, claimant: str, now: datetime | None = None, note: str | None = None
) -> Claim | None:
    """Take the row to execute it: a decided or approved row, or the claimant's own failed attempt
    (its retry). None when somebody else has it or it needs nothing more. `note` (such as "Alertmanager
    could not be asked about silences") goes on the row's reason and on the call's record."""
    now = now or utcnow()
    mine = RemediationAction.claimed_by == claimant
    won = transition(
        session,
        row_id,
        CLAIMABLE,
        S.RUNNING,
        claimed_by=claimant,
        claimed_at=now,
        attempts=RemediationAction.attempts + 1,
    ) or transition(
        session, row_id, (S.FAILED,), S.RUNNING, mine, claimed_at=now, attempts=RemediationAction.attempts + 1
    )
    return _claimed(session, row_id, claimant, note) if won else None


def take_over(
    session: Session, row_id: int, stale_claimant: str | None, claimant: str, now: datetime
) -> Claim | None:
    """A running row whose claimant is presumed dead, taken over to re-send an idempotent action."""
    won = transition(
        session,
        row_id,
        (S.RUNNING,),
        S.RUNNING,
        RemediationAction.claimed_by.is_not_distinct_from(stale_claimant),
        claimed_by=claimant,
        claimed_at=now,
        attempts=RemediationAction.attempts + 1,
    )
    note = f"re-sent: its claimant {stale_claimant} stopped answering and the action is idempotent"
    return _claimed(session, row_id, claimant, note) if won else None


def _claimed(session: Session, row_id: int, claimant: str, note: str | None) -> Claim:
    row = session.execute(
        select(RemediationAction)
        .where(RemediationAction.id == row_id)
        .execution_options(populate_existing=True)
    ).scalar_one()
    call = {"attempt": row.attempts, "claimant": claimant, "started_at": utcnow().isoformat()}
    values: dict[str, Any] = {"calls": [*(row.calls or []), call | ({"note": note} if note else {})]}
    if note:
        values["reason"] = f"{row.reason}; {note}"
    session.execute(
        update(RemediationAction)
        .where(RemediationAction.id == row_id, RemediationAction.claimed_by == claimant)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return Claim(
        row_id,
        claimant,
        row.action,
        dict(row.inputs),
        dict(row.plan) if row.plan is not None else None,
        row.attempts,
        row.alert_id,
        row.incident_id,
    )


def record_plan(session: Session, row_id: int, claimant: str, plan: dict[str, Any]) -> bool:
    """Keep what the action computed before calling (such as 'set replicas to 4'), so that a
    re-send does the same thing instead of computing again from a world it already changed."""
    changed = session.execute(
        update(RemediationAction)
        .where(
            RemediationAction.id == row_id,
            RemediationAction.status == S.RUNNING,
            RemediationAction.claimed_by == claimant,
        )
        .values(plan=plan)
        .execution_options(synchronize_session=False)
    )
    return changed.rowcount == 1


def finish(
    session: Session,
    row_id: int,
    claimant: str,
    to: ActionStatus,
    outcome: dict[str, Any],
    now: datetime | None = None,
) -> bool:
    """The claimant records the result of its call; the call's entry in `calls` gets it too."""
    now = now or utcnow()
    row = session.execute(
        select(RemediationAction)
        .where(RemediationAction.id == row_id)
        .execution_options(populate_existing=True)
    ).scalar_one()
    calls = [dict(c) for c in row.calls or []]
    if calls and calls[-1].get("claimant") == claimant and "finished_at" not in calls[-1]:
        calls[-1] |= {"finished_at": now.isoformat(), "outcome": to.value, "response": outcome}
    return transition(
        session,
        row_id,
        (S.RUNNING,),
        to,
        RemediationAction.claimed_by == claimant,
        result=outcome,
        calls=calls,
        finished_at=now,
    )


def skip(session: Session, row_id: int, reason: str, now: datetime | None = None) -> bool:
    """A claimable row that must not run now (kill switch, silence, maintenance window)."""
    row = session.get(RemediationAction, row_id)
    return row is not None and transition(
        session, row_id, CLAIMABLE, S.SKIPPED, reason=f"{row.reason}; {reason}", finished_at=now or utcnow()
    )


def settle_approval(
    session: Session,
    row_ids: Iterable[int],
    to: ActionStatus,
    note: str,
    by: str,
    now: datetime | None = None,
) -> list[int]:
    """Approve, reject or time out the rows still awaiting approval; returns those this call settled.
    A row another caller settled first is left as it is."""
    now = now or utcnow()
    settled = []
    for row in session.scalars(select(RemediationAction).where(RemediationAction.id.in_(list(row_ids)))):
        finished = {} if to is S.APPROVED else {"finished_at": now}
        if transition(
            session,
            row.id,
            (S.AWAITING_APPROVAL,),
            to,
            reason=f"{row.reason}; {note}",
            settled_by=by,
            settled_at=now,
            **finished,
        ):
            settled.append(row.id)
    return settled


def mark_outcome_unknown(
    session: Session, row_id: int, stale_claimant: str | None, note: str, now: datetime
) -> bool:
    """A claimant that died mid-call: nobody knows whether the target acted. Said so, not guessed."""
    row = session.get(RemediationAction, row_id)
    return row is not None and transition(
        session,
        row_id,
        (S.RUNNING,),
        S.OUTCOME_UNKNOWN,
        RemediationAction.claimed_by.is_not_distinct_from(stale_claimant),
        reason=f"{row.reason}; {note}",
        finished_at=now,
    )


def stale_claims(session: Session, older_than: datetime) -> list[RemediationAction]:
    return list(
        session.scalars(
            select(RemediationAction).where(
                RemediationAction.status == S.RUNNING, RemediationAction.claimed_at < older_than
            )
        )
    )


def unclaimed(session: Session, older_than: datetime) -> list[RemediationAction]:
    """Rows decided (or approved) that nobody claimed: a run died before executing them."""
    return list(
        session.scalars(
            select(RemediationAction).where(
                RemediationAction.status.in_(CLAIMABLE),
                RemediationAction.decided_at < older_than,
                (RemediationAction.settled_at.is_(None)) | (RemediationAction.settled_at < older_than),
            )
        )
    )


def awaiting_since(session: Session, before: datetime) -> list[RemediationAction]:
    return list(
        session.scalars(
            select(RemediationAction).where(
                RemediationAction.status == S.AWAITING_APPROVAL, RemediationAction.decided_at < before
            )
        )
    )


def claim_budget(action_timeout: timedelta, retries: int, retry_delays: Iterable[float]) -> timedelta:
    """How long a live claimant can hold a row: every attempt timing out, plus the delays between."""
    return action_timeout * (retries + 1) + timedelta(seconds=sum(retry_delays))
