"""The handle-alerts flow on a Prefect API: an approval nobody gives, and the automation report."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from prefect import resume_flow_run
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy import select

from flows.handle_alerts import handle_alerts
from tests.conftest import LiveService
from tests.realstack import wait_until
from tests.standins import Failure, HttpRecorder
from tests.test_incidents import alert, notify
from tests.test_remediation import config_path, remediation_config
from watchkeeper.service.app import resume_paused_run
from watchkeeper.store import Store
from watchkeeper.store.actions import list_actions
from watchkeeper.store.remediation import RemediationAction


def flow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http: HttpRecorder, store: Store) -> Store:
    """What the flow reads from its environment: a home, the store, the config `remediation_config`
    wrote, a secret."""
    monkeypatch.setenv("WATCHKEEPER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WATCHKEEPER_DATABASE_URL", store.url.render_as_string(hide_password=False))
    monkeypatch.setenv("WATCHKEEPER_CONFIG", str(config_path(tmp_path)))
    monkeypatch.setenv("TEST_SLACK_URL", f"{http.url}/slack/T000/B000/XXXX")
    return store


def test_an_approval_nobody_gives_times_out_escalates_and_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standins: tuple, prefect_api: None, store: Store
) -> None:
    kube, http, smtp = standins
    remediation_config(tmp_path, kube, http, smtp)
    data = yaml.safe_load(config_path(tmp_path).read_text())
    quality = next(p for p in data["remediation"]["playbooks"] if p["name"] == "quality")
    quality |= {"approval_timeout": "2s", "escalate_to": "slack"}
    config_path(tmp_path).write_text(yaml.safe_dump(data))
    flow_home(tmp_path, monkeypatch, http, store)
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
        report = max(
            (a for a in client.read_artifacts() if a.key == "automation-report"), key=lambda a: a.created
        )
    assert "| scale |" in report.data and "timed_out" in report.data


def test_a_failing_kubernetes_api_is_retried_by_the_action_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standins: tuple, prefect_api: None, store: Store
) -> None:
    kube, http, smtp = standins
    remediation_config(tmp_path, kube, http, smtp)
    flow_home(tmp_path, monkeypatch, http, store)
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


def in_this_context(target: Callable[[], object]) -> threading.Thread:
    """A thread that sees this thread's Prefect settings (the test harness's API)."""
    context = contextvars.copy_context()
    return threading.Thread(target=lambda: context.run(target))


def paused_decision(store: Store) -> dict:
    """The decision awaiting approval, once the run that took it has paused for the answer."""
    [waiting] = wait_until(
        lambda: [
            a for a in list_actions(store).items if a["status"] == "awaiting_approval" and a["flow_run_id"]
        ],
        "a decision awaiting approval",
    )
    with get_client(sync_client=True) as client:
        wait_until(lambda: client.read_flow_run(waiting["flow_run_id"]).state.is_paused(), "the run to pause")
    return waiting


def test_overlapping_runs_pause_once_and_one_approval_acts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standins: tuple, prefect_api: None, store: Store
) -> None:
    kube, http, smtp = standins
    config = remediation_config(tmp_path, kube, http, smtp)
    flow_home(tmp_path, monkeypatch, http, store)
    notify(store, alert("DataQualityDegraded", timedelta(0), service="batch-scorer"))
    summaries: dict[int, dict] = {}
    runs = [
        in_this_context(lambda n=n: summaries.__setitem__(n, handle_alerts(notification_id=n)))
        for n in (1, 2)
    ]
    for run in runs:
        run.start()
    waiting = paused_decision(store)
    api = PREFECT_API_URL.value()

    def resume(run_id: str, answer: dict) -> None:
        with temporary_settings({PREFECT_API_URL: api}):
            resume_paused_run(run_id, answer)

    with LiveService(config, store, api_token="ops", resume_run=resume) as live:
        response = httpx.post(
            f"{live.url}/v1/incidents/{waiting['incident_id']}/approval",
            json={"approved": True, "comment": "go"},
            headers={"Authorization": "Bearer ops"},
            timeout=60,  # the approval resumes the run through Prefect, whose SQLite waits out its locks
        ).json()
        for run in runs:
            run.join(timeout=120)
    assert response["resumed_runs"] == [waiting["flow_run_id"]] and response["not_resumed"] == {}
    assert kube.deployments[("ai", "credit-server")]["replicas"] == 3
    assert len([r for r in kube.requests if r.method == "PATCH"]) == 1
    [row] = list_actions(store).items
    assert (row["status"], row["settled_by"], row["attempts"]) == (
        "succeeded",
        "operator (WATCHKEEPER_API_TOKEN)",
        1,
    )
    # The run that decided paused and acted; the other found the decision taken and did not pause.
    states = [[a["state"] for a in s["actions"].get(1, [])] for s in summaries.values()]
    assert sorted(states) in ([[], ["COMPLETED"]], [["COMPLETED"], ["awaiting_approval"]])


def test_an_approval_given_in_the_prefect_ui_is_recorded_as_the_uis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standins: tuple, prefect_api: None, store: Store
) -> None:
    kube, http, smtp = standins
    remediation_config(tmp_path, kube, http, smtp)
    flow_home(tmp_path, monkeypatch, http, store)
    notify(store, alert("DataQualityDegraded", timedelta(0), service="batch-scorer"))
    run = in_this_context(lambda: handle_alerts(notification_id=1))
    run.start()
    waiting = paused_decision(store)
    # What the UI's form sends: the run's input, and nothing about who: that would be the body's word.
    resume_flow_run(waiting["flow_run_id"], run_input={"approved": True, "comment": "from the UI"})
    run.join(timeout=120)
    [row] = list_actions(store).items
    assert (row["status"], row["settled_by"]) == ("succeeded", "prefect-ui")
    assert "approved in the Prefect UI: from the UI" in row["reason"]
    assert kube.deployments[("ai", "credit-server")]["replicas"] == 3
