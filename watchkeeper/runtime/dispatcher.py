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
from datetime import timedelta

from watchkeeper.store import Store
from watchkeeper.store.outbox import OwedRun, claim_due, record_failed, record_started

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)
CLAIM_BATCH = 20


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

    def dispatch_due(self) -> int:
        """Start every due run; returns how many were started."""
        started = 0
        for run in claim_due(self.store, LEASE, CLAIM_BATCH):
            try:
                flow_run_id = self.start_run(run)
            except Exception as exc:  # noqa: BLE001 - any failure of the Prefect API means: try again later
                log.warning("could not start %s (%s): %s", run.deployment, run.idempotency_key, exc)
                record_failed(self.store, run, f"{type(exc).__name__}: {exc}", self.max_backoff)
            else:
                log.info("started %s run %s for %s", run.deployment, flow_run_id, run.idempotency_key)
                record_started(self.store, run, flow_run_id)
                started += 1
        return started
