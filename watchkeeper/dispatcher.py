"""The outbox dispatcher: starts the Prefect runs the intake owes, once each, whatever fails.

The intake writes a pending row in the same transaction as the alerts. The dispatcher (in the warm
executor) claims due rows with a lease (so executors and restarts do not dispatch the same row at
the same time), creates the run with the row's idempotency key, and records it. When the Prefect
API is unreachable the row goes back to pending with an exponential backoff. Should the process die
between Prefect creating the run and the row being marked, the next attempt presents the same
idempotency key and Prefect answers with the run it already created: a run is never started twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update

from watchkeeper.store import Store
from watchkeeper.store.schema import FlowRunOutbox
from watchkeeper.times import utcnow

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)
CLAIM_BATCH = 20


@dataclass(frozen=True)
class OwedRun:
    id: int
    deployment: str
    parameters: dict
    idempotency_key: str


class OutboxDispatcher:
    def __init__(
        self,
        store: Store,
        start_run: Callable[[OwedRun], str],
        max_backoff: timedelta = timedelta(seconds=30),
    ) -> None:
        self.store = store
        self.start_run = start_run
        self.max_backoff = max_backoff

    def _claim(self) -> list[OwedRun]:
        now = utcnow()
        due = (
            select(FlowRunOutbox)
            .where(
                or_(FlowRunOutbox.state == "pending", FlowRunOutbox.state == "dispatching"),
                FlowRunOutbox.next_attempt_at <= now,
            )
            .order_by(FlowRunOutbox.id)
            .limit(CLAIM_BATCH)
        )
        # Polled ten times a second: a read first, so that an empty outbox takes no write lock.
        with self.store.reading() as session:
            if session.scalar(due.with_only_columns(FlowRunOutbox.id)) is None:
                return []
        with self.store.writing() as session:
            rows = session.scalars(due).all()
            claimed = []
            for row in rows:
                taken = session.execute(
                    update(FlowRunOutbox)
                    .where(FlowRunOutbox.id == row.id, FlowRunOutbox.next_attempt_at == row.next_attempt_at)
                    .values(state="dispatching", next_attempt_at=now + LEASE, attempts=row.attempts + 1)
                    .execution_options(synchronize_session=False)
                )
                if taken.rowcount == 1:
                    claimed.append(OwedRun(row.id, row.deployment, dict(row.parameters), row.idempotency_key))
            return claimed

    def _record(self, run: OwedRun, flow_run_id: str | None, error: str | None) -> None:
        now = utcnow()
        with self.store.writing() as session:
            row = session.get(FlowRunOutbox, run.id)
            if row is None:
                return
            if flow_run_id is not None:
                row.state, row.flow_run_id, row.dispatched_at, row.last_error = (
                    "dispatched",
                    flow_run_id,
                    now,
                    None,
                )
            else:
                backoff = min(timedelta(seconds=2 ** min(row.attempts, 16)), self.max_backoff)
                row.state, row.next_attempt_at, row.last_error = (
                    "pending",
                    now + backoff,
                    (error or "")[:2000],
                )

    def dispatch_due(self) -> int:
        """Start every due run; returns how many were started."""
        started = 0
        for run in self._claim():
            try:
                flow_run_id = self.start_run(run)
            except Exception as exc:  # noqa: BLE001 - any failure of the Prefect API means: try again later
                log.warning("could not start %s (%s): %s", run.deployment, run.idempotency_key, exc)
                self._record(run, None, f"{type(exc).__name__}: {exc}")
            else:
                log.info("started %s run %s for %s", run.deployment, flow_run_id, run.idempotency_key)
                self._record(run, flow_run_id, None)
                started += 1
        return started
