"""The outbox: runs owed to Alertmanager notifications start once each, whatever is down meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import free_port
from tests.realstack import Process, wait_until
from tests.test_alert_intake import NOTIFICATION
from watchkeeper.dispatcher import OutboxDispatcher, OwedRun
from watchkeeper.store import Store
from watchkeeper.store.alerts import WebhookNotification, store_notification
from watchkeeper.store.schema import FlowRunOutbox

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
    first, second = OutboxDispatcher(store), OutboxDispatcher(store)
    assert len(first._claim()) == 1
    assert second._claim() == []


@pytest.mark.stack
def test_alerts_posted_while_prefect_is_down_start_one_run_once_it_is_back(
    tmp_path: Path, store: Store
) -> None:
    prefect_port, service_port = free_port(), free_port()
    service_url = f"http://127.0.0.1:{service_port}"
    env = {
        **os.environ,
        "WATCHKEEPER_HOME": str(tmp_path / "home"),
        "WATCHKEEPER_DATABASE_URL": store.url.render_as_string(hide_password=False),
        "WATCHKEEPER_API_TOKEN": TOKEN,
        "WATCHKEEPER_OUTBOX_MAX_BACKOFF_SECONDS": "1",
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    serve = [str(BIN / "watchkeeper"), "serve", "--port", str(service_port)]
    headers = {"Authorization": f"Bearer {TOKEN}"}

    service = Process(serve, tmp_path / "service-1.log", env)
    try:
        wait_until(lambda: httpx.get(f"{service_url}/healthz").is_success, "the service")
        answers = [
            httpx.post(f"{service_url}/v1/alertmanager", json=NOTIFICATION, headers=headers) for _ in range(3)
        ]
        assert [a.status_code for a in answers] == [200, 200, 200]
        wait_until(
            lambda: outbox(store)[0].attempts >= 2 and outbox(store)[0].state == "pending",
            "two failed attempts to reach Prefect",
        )
        [row] = outbox(store)
        assert row.state == "pending" and row.flow_run_id is None and "Connect" in row.last_error
    finally:
        service.stop()  # restarted below, while the run is still owed

    prefect = Process(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
        tmp_path / "prefect.log",
        env,
    )
    service = None
    try:
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{prefect_port}/api/health").is_success, "Prefect", timeout=90
        )
        subprocess.run(
            [
                str(BIN / "python"),
                "-c",
                "from flows.handle_alerts import handle_alerts as f; "
                "f.to_deployment(name='handle-alerts').apply()",
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        service = Process(serve, tmp_path / "service-2.log", env)
        wait_until(lambda: outbox(store)[0].state == "dispatched", "the owed run to start", timeout=60)
        assert httpx.post(f"{service_url}/v1/alertmanager", json=NOTIFICATION, headers=headers).json()[
            "duplicate"
        ]
        runs = httpx.post(f"http://127.0.0.1:{prefect_port}/api/flow_runs/filter", json={}).json()
        [row] = outbox(store)
        assert [r["id"] for r in runs] == [row.flow_run_id]
        assert runs[0]["parameters"] == {"notification_id": row.notification_id}
        assert runs[0]["idempotency_key"] == row.idempotency_key
    finally:
        if service is not None:
            service.stop()
        prefect.stop()
