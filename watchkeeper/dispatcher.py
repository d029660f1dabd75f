"""The outbox dispatcher: starts the Prefect runs the intake owes, once each, whatever fails.

The intake writes a pending row in the same transaction as the alerts. The dispatcher claims due
rows with a lease (so replicas and restarts do not dispatch the same row at the same time), calls
`run_deployment(..., idempotency_key=..., timeout=0)`, and records the run. When the Prefect API is
unreachable the row goes back to pending with an exponential backoff. Should the process die
between Prefect creating the run and the row being marked, the next attempt presents the same
idempotency key and Prefect answers with the run it already created: a run is never started twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update

from watchkeeper.store import Store
from watchkeeper.store.schema import FlowRunOutbox, utcnow

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)
CLAIM_BATCH = 20


@dataclass(frozen=True)
class OwedRun:
    id: int
    deployment: str
    parameters: dict
    idempotency_key: str


def start_prefect_run(run: OwedRun) -> str:
    """Create the flow run through the Prefect API; returns its id."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(
        run.deployment, parameters=run.parameters, idempotency_key=run.idempotency_key, timeout=0
    )
    return str(flow_run.id)


class OutboxDispatcher:
    def __init__(
        self,
        store: Store,
        start_run: Callable[[OwedRun], str] = start_prefect_run,
        poll_seconds: float = 1.0,
        max_backoff: timedelta = timedelta(seconds=30),
    ) -> None:
        self.store = store
        self.start_run = start_run
        self.poll_seconds = poll_seconds
        self.max_backoff = max_backoff
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _claim(self) -> list[OwedRun]:
        now = utcnow()
        with self.store.writing() as session:
            rows = session.scalars(
                select(FlowRunOutbox)
                .where(
                    or_(FlowRunOutbox.state == "pending", FlowRunOutbox.state == "dispatching"),
                    FlowRunOutbox.next_attempt_at <= now,
                )
                .order_by(FlowRunOutbox.id)
                .limit(CLAIM_BATCH)
            ).all()
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

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.dispatch_due()
            except Exception:  # noqa: BLE001 - the store may be briefly unavailable; keep the loop alive
                log.exception("outbox dispatch failed; retrying")
            self.wake.wait(self.poll_seconds)
            self.wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="outbox-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
