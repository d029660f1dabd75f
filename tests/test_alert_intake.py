"""POST /v1/alertmanager: authenticated, validated, stored before the answer, idempotent."""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tasks.incidents import correlate_pending_alerts
from tests.conftest import LiveService, alertmanager_only
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.runtime.nudges import NudgeListener
from watchkeeper.store import Store
from watchkeeper.store.schema import Alert, AlertNotification, FlowRunOutbox, Incident

TOKEN = "webhook-s3cret"
NOTIFICATION = {
    "version": "4",
    "groupKey": '{}/{}:{alertname="ModelAccuracyCritical"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "watchkeeper",
    "groupLabels": {"alertname": "ModelAccuracyCritical"},
    "commonLabels": {"alertname": "ModelAccuracyCritical", "severity": "critical"},
    "commonAnnotations": {},
    "externalURL": "http://127.0.0.1:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "ModelAccuracyCritical",
                "severity": "critical",
                "team": "ml_engineering",
                "service": "model-inference",
                "model_name": "fraud_detection_v2",
                "model_version": "v2",
            },
            "annotations": {"summary": "CRITICAL: Model fraud_detection_v2 accuracy severely degraded"},
            "startsAt": "2026-11-26T09:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1:9090/graph",
            "fingerprint": "5f3a9c1d2e4b6a70",
        }
    ],
}


@pytest.fixture
def webhook(example_config: WatchkeeperConfig, store: Store) -> Iterator[LiveService]:
    with LiveService(
        example_config, store, credentials=alertmanager_only(TOKEN, basic="alertmanager:pa55")
    ) as live:
        yield live


def post(live: LiveService, body: object, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{live.url}/v1/alertmanager", json=body, headers=headers)


def counts(store: Store) -> tuple[int, int, int]:
    with store.reading() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(table))
            for table in (AlertNotification, Alert, FlowRunOutbox)
        )


def test_the_same_notification_three_times_stores_its_alert_once_and_owes_one_run(webhook, store) -> None:  # noqa: ANN001
    answers = [post(webhook, NOTIFICATION).json() for _ in range(3)]
    assert answers[0] == {
        "notification_id": 1,
        "new_alerts": 1,
        "resolved_alerts": 0,
        "duplicate": False,
        "run_pending": True,
        "rejected": [],
    }
    assert all(a["duplicate"] and not a["run_pending"] for a in answers[1:])
    assert counts(store) == (1, 1, 1)
    with store.reading() as session:
        alert = session.scalars(select(Alert)).one()
        outbox = session.scalars(select(FlowRunOutbox)).one()
    assert (alert.alertname, alert.severity, alert.model_name, alert.status) == (
        "ModelAccuracyCritical",
        "critical",
        "fraud_detection_v2",
        "firing",
    )
    assert alert.ends_at is None
    assert outbox.deployment == "handle-alerts/handle-alerts" and outbox.state == "pending"


def test_a_notification_that_owes_a_run_nudges_the_executors_and_a_duplicate_does_not(
    example_config: WatchkeeperConfig, store: Store, tmp_path: Path
) -> None:
    listener = NudgeListener.open(tmp_path)
    assert listener is not None
    credentials = alertmanager_only(TOKEN)
    try:
        with LiveService(example_config, store, credentials=credentials, nudged_in=tmp_path) as live:
            assert post(live, NOTIFICATION).json()["run_pending"]
            assert listener.wait(0)  # sent before the answer
            assert post(live, NOTIFICATION).json()["duplicate"]
            assert not listener.wait(0)
    finally:
        listener.close()


def test_a_regrouped_notification_adds_only_the_new_alert_and_a_resolution_closes_it(webhook, store) -> None:  # noqa: ANN001
    post(webhook, NOTIFICATION)
    grown = copy.deepcopy(NOTIFICATION)
    grown["alerts"].append(
        {
            **grown["alerts"][0],
            "fingerprint": "0000aaaa",
            "labels": {**grown["alerts"][0]["labels"], "model_name": "credit_approval"},
        }
    )
    assert post(webhook, grown).json()["new_alerts"] == 1
    resolved = copy.deepcopy(NOTIFICATION)
    resolved["status"] = "resolved"
    resolved["alerts"][0].update(status="resolved", endsAt="2026-11-26T09:20:00Z")
    answer = post(webhook, resolved).json()
    assert (answer["new_alerts"], answer["resolved_alerts"], answer["run_pending"]) == (0, 1, True)
    with store.reading() as session:
        statuses = dict(session.execute(select(Alert.fingerprint, Alert.status)).all())
    assert statuses == {"5f3a9c1d2e4b6a70": "resolved", "0000aaaa": "firing"}
    assert counts(store) == (3, 2, 3)


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "Basic " + base64.b64encode(b"alertmanager:x").decode()]
)
def test_unauthenticated_posts_get_401_and_store_nothing(webhook, store, authorization) -> None:  # noqa: ANN001
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(f"{webhook.url}/v1/alertmanager", json=NOTIFICATION, headers=headers)
    assert response.status_code == 401
    assert counts(store) == (0, 0, 0)


def test_basic_credentials_are_accepted(webhook, store) -> None:  # noqa: ANN001
    basic = "Basic " + base64.b64encode(b"alertmanager:pa55").decode()
    response = httpx.post(
        f"{webhook.url}/v1/alertmanager", json=NOTIFICATION, headers={"Authorization": basic}
    )
    assert response.status_code == 200 and counts(store) == (1, 1, 1)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda n: n.update(version="3"), "version"),
        (lambda n: n["alerts"][0].pop("fingerprint"), "alerts[0].fingerprint"),
        (lambda n: n["alerts"][0].update(startsAt="nine o'clock"), "alerts[0].startsAt"),
        (lambda n: n["alerts"][0]["labels"].pop("alertname"), "alerts[0].labels"),
        (lambda n: n.update(alerts=[]), "alerts"),
    ],
)
def test_invalid_payloads_get_422_naming_the_field(webhook, store, change, field) -> None:  # noqa: ANN001
    body = copy.deepcopy(NOTIFICATION)
    change(body)
    response = post(webhook, body)
    assert response.status_code == 422 and response.json()["field"] == field
    assert counts(store) == (0, 0, 0)


def test_a_body_over_the_limit_gets_413(example_config: WatchkeeperConfig, store: Store) -> None:
    small = example_config.model_copy(
        update={"intake": example_config.intake.model_copy(update={"max_body_bytes": 500})}
    )
    with LiveService(small, store, credentials=alertmanager_only(TOKEN)) as live:
        assert post(live, NOTIFICATION).status_code == 413
    assert counts(store) == (0, 0, 0)


def test_times_with_offsets_are_their_utc_instants_through_to_the_incident(
    webhook: LiveService, store: Store, example_config: WatchkeeperConfig
) -> None:
    """startsAt and endsAt as a sender in +02:00 writes them: the same alert as its `Z` twin, and the
    incident opens and resolves at the UTC instants (what handle-alerts correlates)."""
    post(webhook, NOTIFICATION)
    shifted = copy.deepcopy(NOTIFICATION)
    shifted["alerts"][0]["startsAt"] = "2026-11-26T11:00:00+02:00"
    assert post(webhook, shifted).json()["new_alerts"] == 0
    correlate_pending_alerts(store, example_config)
    shifted["status"] = "resolved"
    shifted["alerts"][0].update(status="resolved", endsAt="2026-11-26T11:20:00.5+02:00")
    assert post(webhook, shifted).json()["resolved_alerts"] == 1
    correlate_pending_alerts(store, example_config)
    with store.reading() as session:
        incident = session.scalars(select(Incident)).one()
        alert = session.scalars(select(Alert)).one()
    assert incident.opened_at == alert.starts_at == datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    assert incident.resolved_at == alert.ends_at == datetime(2026, 11, 26, 9, 20, 0, 500000, tzinfo=UTC)
