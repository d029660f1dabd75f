"""The outbox: runs owed to Alertmanager notifications start once each, whatever is down meanwhile."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import free_port
from tests.realstack import Process, wait_until
from tests.test_alert_intake import NOTIFICATION
from watchkeeper.runtime.dispatcher import CLAIM_BATCH, LEASE, OutboxDispatcher
from watchkeeper.store import Store
from watchkeeper.store.alerts import WebhookNotification, store_notification
from watchkeeper.store.outbox import OwedRun, claim_due, record_failed, record_started
from watchkeeper.store.schema import FlowRunOutbox, Incident, OutboxState

BIN = Path(sys.executable).parent
TOKEN = "outbox-test-token"


def outbox(store: Store) -> list[FlowRunOutbox]:
    with store.reading() as session:
        return list(session.scalars(select(FlowRunOutbox).order_by(FlowRunOutbox.id)))


def test_a_failing_prefect_api_is_retried_with_backoff_then_the_run_is_recorded(store: Store) -> None:
    store_notification(store, WebhookNotification.model_validate(NOTIFICATION), NOTIFICATION)
    calls: list[OwedRun] = []

    def start_run(run: OwedRun) -> str:
        calls.append(run)
        if len(calls) == 1:
            raise httpx.ConnectError("connection refused")
        return "run-1"

    dispatcher = OutboxDispatcher(store, start_run, max_backoff=timedelta(0))
    assert dispatcher.dispatch_due() == 0
    [row] = outbox(store)
    assert row.state == "pending" and row.attempts == 1 and "connection refused" in row.last_error
    assert dispatcher.dispatch_due() == 1
    [row] = outbox(store)
    assert (row.state, row.flow_run_id, row.attempts, row.last_error) == ("dispatched", "run-1", 2, None)
    assert dispatcher.dispatch_due() == 0
    assert [c.idempotency_key for c in calls] == [row.idempotency_key] * 2
    assert calls[0].deployment == "handle-alerts/handle-alerts"


def test_a_claimed_run_is_not_claimed_again_until_its_lease_expires(store: Store) -> None:
    store_notification(store, WebhookNotification.model_validate(NOTIFICATION), NOTIFICATION)
    assert len(claim_due(store, LEASE, CLAIM_BATCH)) == 1
    assert claim_due(store, LEASE, CLAIM_BATCH) == []


def test_an_outcome_is_recorded_only_while_its_claim_holds_the_lease(store: Store) -> None:
    """A dispatcher whose lease ran out while Prefect answered slowly records nothing: the one that
    took the row over records it (compare-and-set on the lease, never read-then-write)."""
    store_notification(store, WebhookNotification.model_validate(NOTIFICATION), NOTIFICATION)
    [slow] = claim_due(store, timedelta(0), CLAIM_BATCH)  # its lease runs out at once
    [fast] = claim_due(store, LEASE, CLAIM_BATCH)
    assert (fast.id, fast.attempts) == (slow.id, 2)
    assert not record_failed(store, slow, "TimeoutError", timedelta(seconds=30))
    assert record_started(store, fast, "run-of-fast")
    assert not record_started(store, slow, "run-of-slow")
    with store.reading() as session:
        row = session.get(FlowRunOutbox, fast.id)
        assert (row.state, row.flow_run_id, row.last_error) == (OutboxState.DISPATCHED, "run-of-fast", None)


@pytest.mark.stack
def test_alerts_posted_while_prefect_is_down_start_one_run_once_it_is_back(
    tmp_path: Path, store: Store
) -> None:
    """The service takes alerts with Prefect down; the executor, started meanwhile, waits for
    Prefect, then creates the owed run once and executes it warm, in its own process."""
    prefect_port, service_port = free_port(), free_port()
    service_url = f"http://127.0.0.1:{service_port}"
    prefect_api = f"http://127.0.0.1:{prefect_port}/api"
    env = {
        **os.environ,
        "WATCHKEEPER_HOME": str(tmp_path / "home"),
        "WATCHKEEPER_DATABASE_URL": store.url.render_as_string(hide_password=False),
        "WATCHKEEPER_API_TOKEN": TOKEN,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    headers = {"Authorization": f"Bearer {TOKEN}"}
    service = Process(
        [str(BIN / "watchkeeper"), "serve", "--port", str(service_port)], tmp_path / "service.log", env
    )
    executor = Process([str(BIN / "watchkeeper"), "executor"], tmp_path / "executor.log", env)
    prefect = None
    try:
        wait_until(lambda: httpx.get(f"{service_url}/healthz").is_success, "the service")
        answers = [
            httpx.post(f"{service_url}/v1/alertmanager", json=NOTIFICATION, headers=headers) for _ in range(3)
        ]
        assert [a.status_code for a in answers] == [200, 200, 200]
        wait_until(lambda: "cannot register the deployments yet" in executor.log.read_text(), "the executor")
        [row] = outbox(store)
        assert row.state == "pending" and row.flow_run_id is None

        prefect = Process(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            tmp_path / "prefect.log",
            env,
        )
        wait_until(lambda: outbox(store)[0].state == "dispatched", "the owed run to start", timeout=180)
        assert httpx.post(f"{service_url}/v1/alertmanager", json=NOTIFICATION, headers=headers).json()[
            "duplicate"
        ]
        [row] = outbox(store)
        run = wait_until(
            lambda: (
                httpx.get(f"{prefect_api}/flow_runs/{row.flow_run_id}").json()["state"]["type"] == "COMPLETED"
                and httpx.get(f"{prefect_api}/flow_runs/{row.flow_run_id}").json()
            ),
            "the run to complete",
        )
        runs = httpx.post(f"{prefect_api}/flow_runs/filter", json={}).json()
        assert [r["id"] for r in runs if r["flow_id"] == run["flow_id"]] == [row.flow_run_id]
        assert run["parameters"] == {"notification_id": row.notification_id}
        assert run["idempotency_key"] == row.idempotency_key
        assert run["run_count"] == 1
        executed_here = f"handle-alerts run {run['name']}: StateType.COMPLETED"  # once run_flow returned
        wait_until(lambda: executed_here in executor.log.read_text(), "the executor to log the run")
        # No trace receiver here: the notification's trace still reaches the incident its run opened.
        _, trace_id, _, _ = row.traceparent.split("-")
        with store.reading() as session:
            assert session.scalars(select(Incident.trace_id)).all() == [trace_id]
    finally:
        executor.stop()
        service.stop()
        if prefect is not None:
            prefect.stop()
