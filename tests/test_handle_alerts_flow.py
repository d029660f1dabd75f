"""The handle-alerts flow on a Prefect API: an approval nobody gives, and the automation report."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness
from sqlalchemy import select

from flows.handle_alerts import handle_alerts
from tests.standins import Failure, HttpRecorder
from tests.test_incidents import alert, notify
from tests.test_remediation import config_path, remediation_config
from watchkeeper.settings import Settings
from watchkeeper.store import Store
from watchkeeper.store.remediation import RemediationAction


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=60):
        yield


def flow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http: HttpRecorder) -> Store:
    """What the flow reads from its environment: a home, the config `remediation_config` wrote, a secret."""
    monkeypatch.setenv("WATCHKEEPER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WATCHKEEPER_CONFIG", str(config_path(tmp_path)))
    monkeypatch.setenv("TEST_SLACK_URL", f"{http.url}/slack/T000/B000/XXXX")
    store = Settings().open_store()
    store.upgrade()
    return store


def test_an_approval_nobody_gives_times_out_escalates_and_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standins: tuple, prefect_api: None
) -> None:
    kube, http, smtp = standins
    remediation_config(tmp_path, kube, http, smtp)
    data = yaml.safe_load(config_path(tmp_path).read_text())
    quality = next(p for p in data["remediation"]["playbooks"] if p["name"] == "quality")
    quality |= {"approval_timeout": "2s", "escalate_to": "slack"}
    config_path(tmp_path).write_text(yaml.safe_dump(data))
    store = flow_home(tmp_path, monkeypatch, http)
    notify(store, alert("DataQualityDegraded", timedelta(0), service="batch-scorer"))

    summary = handle_alerts(notification_id=1)

    assert summary["opened"] == [1]
    assert summary["actions"] == {
        1: [
            {
                "action": "scale",
                "target": "deployment/ai/credit-server",
                "decision": "needs_approval",
                "state": "awaiting_approval",
            }
        ]
    }
    with store.reading() as session:
        [row] = session.scalars(select(RemediationAction)).all()
    assert row.status == "timed_out" and row.reason.endswith(
        "approval timed out; nothing was done; escalated to slack"
    )
    assert kube.deployments[("ai", "credit-server")]["replicas"] == 2
    assert not [r for r in kube.requests if r.method == "PATCH"]
    [escalation] = http.to("/slack/T000/B000/XXXX")
    assert "incident 1 open" in escalation.body["text"]
    with get_client(sync_client=True) as client:
        [report] = [a for a in client.read_artifacts() if a.key == "automation-report"]
    assert "| scale |" in report.data and "timed_out" in report.data


def test_a_failing_kubernetes_api_is_retried_by_the_action_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standins: tuple, prefect_api: None
) -> None:
    kube, http, smtp = standins
    remediation_config(tmp_path, kube, http, smtp)
    store = flow_home(tmp_path, monkeypatch, http)
    notify(store, alert("ModelInferenceLatencyHigh", timedelta(0), model_name="credit_approval"))
    kube.failures.extend([Failure(500), Failure(409)])

    summary = handle_alerts(notification_id=1)

    assert [a["state"] for a in summary["actions"][1]] == ["COMPLETED"] * 4
    assert kube.deployments[("ai", "credit-server")]["replicas"] == 4
    reads = [r for r in kube.requests if r.method == "GET" and r.path.endswith("/scale")]
    assert len(reads) == 3  # two failed attempts, then the one that scaled
    with store.reading() as session:
        scale = session.scalars(select(RemediationAction).where(RemediationAction.action == "scale")).one()
    assert scale.status == "succeeded" and scale.result == {
        "changed": True,
        "previous_replicas": 2,
        "replicas": 4,
    }
