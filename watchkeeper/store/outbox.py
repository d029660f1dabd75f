"""The outbox of Prefect runs the intake owes: its states and every transition, each a
compare-and-set.

    pending --claim--> dispatching --started--> dispatched
       ^                    |
       +------failed--------+        (and a lease that ran out is claimable again)

The intake writes a pending row with its notification (`store/alerts.py`). A claim takes due rows
(pending, or dispatching whose lease ran out) under a lease of `lease`; only the claim that changed
the row holds it. Recording the outcome changes the row only while that claim still holds it (the
same lease), so a dispatcher whose lease ran out while Prefect answered slowly records nothing and
the dispatcher that took the row over records it instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from watchkeeper.store import Store
from watchkeeper.store.schema import FlowRunOutbox, OutboxState
from watchkeeper.times import utcnow


@dataclass(frozen=True)
class OwedRun:
    id: int
    deployment: str
    parameters: dict
    idempotency_key: str
    attempts: int
    lease_until: datetime
    traceparent: str | None = None


def claim_due(store: Store, lease: timedelta, batch: int) -> list[OwedRun]:
    """Claim up to `batch` due rows, oldest first."""
    now = utcnow()
    due = (
        select(FlowRunOutbox)
        .where(
            or_(FlowRunOutbox.state == OutboxState.PENDING, FlowRunOutbox.state == OutboxState.DISPATCHING),
            FlowRunOutbox.next_attempt_at <= now,
        )
        .order_by(FlowRunOutbox.id)
        .limit(batch)
    )
    # Polled ten times a second: a read first, so that an empty outbox takes no write lock.
    with store.reading() as session:
        if session.scalar(due.with_only_columns(FlowRunOutbox.id)) is None:
            return []
    with store.writing() as session:
        claimed = []
        for row in session.scalars(due).all():
            taken = session.execute(
                update(FlowRunOutbox)
                .where(FlowRunOutbox.id == row.id, FlowRunOutbox.next_attempt_at == row.next_attempt_at)
                .values(state=OutboxState.DISPATCHING, next_attempt_at=now + lease, attempts=row.attempts + 1)
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount == 1:
                claimed.append(
                    OwedRun(
                        row.id,
                        row.deployment,
                        dict(row.parameters),
                        row.idempotency_key,
                        row.attempts + 1,
                        now + lease,
                        row.traceparent,
                    )
                )
        return claimed


def _held(run: OwedRun) -> tuple:
    return (
        FlowRunOutbox.id == run.id,
        FlowRunOutbox.state == OutboxState.DISPATCHING,
        FlowRunOutbox.next_attempt_at == run.lease_until,
    )


def record_started(store: Store, run: OwedRun, flow_run_id: str) -> bool:
    """dispatching -> dispatched, while this claim holds the row; True when it changed it."""
    with store.writing() as session:
        changed = session.execute(
            update(FlowRunOutbox)
            .where(*_held(run))
            .values(
                state=OutboxState.DISPATCHED, flow_run_id=flow_run_id, dispatched_at=utcnow(), last_error=None
            )
            .execution_options(synchronize_session=False)
        )
    return changed.rowcount == 1


def record_failed(store: Store, run: OwedRun, error: str, max_backoff: timedelta) -> bool:
    """dispatching -> pending, due again after an exponential backoff, while this claim holds it."""
    backoff = min(timedelta(seconds=2 ** min(run.attempts, 16)), max_backoff)
    with store.writing() as session:
        changed = session.execute(
            update(FlowRunOutbox)
            .where(*_held(run))
            .values(state=OutboxState.PENDING, next_attempt_at=utcnow() + backoff, last_error=error[:2000])
            .execution_options(synchronize_session=False)
        )
    return changed.rowcount == 1
