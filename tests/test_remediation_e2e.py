"""End to end on the real stack: Alertmanager -> intake -> handle-alerts on Prefect -> actions on the
stand-ins -> audit trail, including a playbook that waits for approval given from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.standins import OtlpReceiver
from tests.test_remediation import config_path, remediation_config
from tests.test_stack import wait_for
from watchkeeper.local.stack import free_ports
from watchkeeper.store import Store

WATCHKEEPER = str(Path(sys.executable).parent / "watchkeeper")


WEBHOOK = {"Authorization": "Bearer webh00k"}


def notification(alert: dict, version: str, starts_at: str, ends_at: str | None = None) -> dict:
    """Alertmanager's webhook body for the alert on another model version, firing or resolved."""
    status = "resolved" if ends_at else "firing"
    return {
        "version": "4",
        "status": status,
        "receiver": "watchkeeper",
        "groupKey": f"burst-{version}",
        "alerts": [
            {
                "status": status,
                "labels": {**alert["labels"], "model_version": version},
                "annotations": {},
                "startsAt": starts_at,
                **({"endsAt": ends_at} if ends_at else {}),
                "fingerprint": f"burst-{version}",
            }
        ],
    }


def members(service: str, incident_id: int) -> list[dict]:
    return httpx.get(f"{service}/v1/incidents/{incident_id}", headers=OPERATOR).json()["members"]


pytestmark = pytest.mark.stack


OPERATOR = {"Authorization": "Bearer 0perator"}


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


def test_alertmanager_to_remediation_with_an_approval_from_the_cli(
    tmp_path: Path, standins: tuple, store: Store, otlp: OtlpReceiver
) -> None:
    """On each back end: a burst of notifications about one failure calls a slow target once; an
    approval-gated playbook waits, and `watchkeeper approve` (through the service, as the operator)
    makes it act once. The first notification is one trace, from the webhook to the actions' calls."""
    kube, http, smtp = standins
    remediation_config(tmp_path, kube, http, smtp)
    http.delay["/breaker/credit_approval/open"] = 1.5
    ports = free_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "WATCHKEEPER_"))}
    env |= {
        "WATCHKEEPER_HOME": str(tmp_path / "home"),
        "WATCHKEEPER_CONFIG": str(config_path(tmp_path)),
        "WATCHKEEPER_DATABASE_URL": store.url.render_as_string(hide_password=False),
        "WATCHKEEPER_INTAKE_TOKEN": "int4ke",
        "WATCHKEEPER_ALERTMANAGER_TOKEN": "webh00k",
        "WATCHKEEPER_OPERATOR_TOKEN": "0perator",
        "TEST_SLACK_URL": f"{http.url}/slack/T000/B000/XXXX",
        "TEST_PD_KEY": "R0UT1NGKEY",
        "TEST_GATEWAY_TOKEN": "g4teway",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    cli = lambda *args: subprocess.run(  # noqa: E731
        [WATCHKEEPER, *args], capture_output=True, text=True, env=env, timeout=300
    )
    up = cli("up", *(f"--{name}-port={port}" for name, port in ports.items()))
    service = f"http://127.0.0.1:{ports['service']}"
    alertmanager = f"http://127.0.0.1:{ports['alertmanager']}/api/v2/alerts"
    actions = lambda incident=None: httpx.get(  # noqa: E731
        f"{service}/v1/actions", params={"incident": incident} if incident else {}, headers=OPERATOR
    ).json()["actions"]
    accuracy_name = "ModelAccuracyCritical"
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        accuracy = {
            "labels": {
                "alertname": "ModelAccuracyCritical",
                "severity": "critical",
                "team": "ml_engineering",
                "model_name": "credit_approval",
            },
            "annotations": {"summary": "accuracy below the critical threshold"},
        }
        assert httpx.post(alertmanager, json=[accuracy]).status_code == 200
        wait_for(lambda: http.to("/pagerduty/v2/enqueue"), "the playbook to page")
        done = wait_for(
            lambda: [a for a in actions() if a["status"] == "succeeded"] if len(actions()) == 4 else [],
            "four audited actions",
        )
        assert sorted(a["action"] for a in done) == ["circuit_breaker", "fallback_model", "notify", "ticket"]
        assert all(a["flow_run_id"] for a in done)
        assert http.to("/router/activate_fallback")[0].body["active"] is True
        assert_one_trace(service, done[0]["incident_id"], otlp, http, tmp_path / "home" / "logs")

        # Alertmanager's notifications about the same failure on two more versions, each starting a
        # run while the circuit breaker may still be answering: still one call, as the audit says.
        webhook = f"{service}/v1/alertmanager"
        burst = {version: datetime.now(UTC).isoformat() for version in ("v2", "v3")}
        for version, started in burst.items():
            answer = httpx.post(webhook, json=notification(accuracy, version, started), headers=WEBHOOK)
            assert answer.status_code == 200, answer.text
        incident_id = done[0]["incident_id"]
        wait_for(lambda: len(members(service, incident_id)) == 3, "the burst to join the incident")
        assert len(http.to("/breaker/credit_approval/open")) == 1
        [breaker] = [a for a in actions() if a["action"] == "circuit_breaker" and a["status"] == "succeeded"]
        assert breaker["attempts"] == 1 and len(breaker["calls"]) == 1

        quality = {
            "labels": {"alertname": "DataQualityDegraded", "severity": "warning", "service": "batch-scorer"}
        }
        assert httpx.post(alertmanager, json=[quality]).status_code == 200
        waiting = wait_for(
            lambda: [a for a in actions() if a["status"] == "awaiting_approval"], "a paused playbook"
        )
        assert (
            waiting[0]["decision"] == "needs_approval"
            and kube.deployments[("ai", "credit-server")]["replicas"] == 2
        )
        approved = cli("approve", str(waiting[0]["incident_id"]), "--comment", "go")
        assert approved.returncode == 0, approved.stdout + approved.stderr
        assert "1 paused run(s) resumed" in approved.stdout
        wait_for(lambda: kube.deployments[("ai", "credit-server")]["replicas"] == 3, "the approved scale-up")
        [row] = wait_for(
            lambda: [a for a in actions(waiting[0]["incident_id"]) if a["status"] == "succeeded"],
            "the audit trail to record it",
        )
        assert row["settled_by"] == "operator (WATCHKEEPER_OPERATOR_TOKEN)" and row["reason"].endswith(": go")
        assert len([r for r in kube.requests if r.method == "PATCH"]) == 1

        # Resolve it as Prometheus does: the same alert, its own startsAt, an endsAt in the past.
        [firing] = [a for a in httpx.get(alertmanager).json() if a["labels"]["alertname"] == accuracy_name]
        ended = {
            **accuracy,
            "startsAt": firing["startsAt"],
            "endsAt": (datetime.now(UTC) - timedelta(seconds=1)).isoformat(),
        }
        assert httpx.post(alertmanager, json=[ended]).status_code == 200
        for version, started in burst.items():
            resolved = notification(accuracy, version, started, ended["endsAt"])
            assert httpx.post(webhook, json=resolved, headers=WEBHOOK).status_code == 200
        wait_for(
            lambda: any(r.body.get("event_action") == "resolve" for r in http.to("/pagerduty/v2/enqueue")),
            "the page to resolve with the incident",
            timeout=120,
        )
        assert http.to("/router/activate_fallback")[-1].body["active"] is False
        report = cli("report", "--json")
        assert report.returncode == 0 and '"success_rate": 1.0' in report.stdout
    finally:
        cli("down")


def assert_one_trace(service: str, incident_id: int, otlp: OtlpReceiver, http: object, logs: Path) -> None:
    """The incident keeps its notification's trace id; the receiver has that trace whole (every
    span's parent in it, one root: the webhook) across the service, the executor and Prefect's run
    and tasks; each action's call carried it to its target; the run's log lines name it."""
    trace_id = httpx.get(f"{service}/v1/incidents/{incident_id}", headers=OPERATOR).json()["trace_id"]
    assert trace_id is not None and len(trace_id) == 32
    actions = {f"action {name}" for name in ("circuit_breaker", "fallback_model", "notify", "ticket")}
    wanted = {"alertmanager notification", "start handle-alerts/handle-alerts", *actions}

    def whole() -> list | None:
        found = otlp.trace(trace_id)
        names = {s.name for s in found}
        ran = any(s.attributes.get("prefect.run.type") == "flow" for s in found)
        calls = [s for s in found if s.name == "POST 127.0.0.1"]
        return found if ran and wanted <= names and len(calls) == len(actions) else None

    spans = wait_for(whole, "the notification's trace at the receiver")
    by_id = {s.span_id: s for s in spans}
    [root] = [s for s in spans if s.parent_span_id is None]
    assert root.name == "alertmanager notification" and root.service == "watchkeeper-service"
    assert all(s.parent_span_id in by_id for s in spans if s is not root)
    [flow_run] = [s for s in spans if s.attributes.get("prefect.run.type") == "flow"]
    assert by_id[flow_run.parent_span_id].name == "start handle-alerts/handle-alerts"
    tasks = [s for s in spans if s.attributes.get("prefect.run.type") == "task"]
    assert {by_id[t.parent_span_id].name for t in tasks} == {flow_run.name}
    assert all(by_id[s.parent_span_id] in tasks for s in spans if s.name in actions)
    assert all(by_id[s.parent_span_id].name in actions for s in spans if s.name == "POST 127.0.0.1")
    assert {s.service for s in spans} == {"watchkeeper-service", "watchkeeper-executor"}
    # The target continues the trace under the call that reached it.
    _, sent_trace, sent_parent, _ = (
        http.to("/breaker/credit_approval/open")[0].headers["traceparent"].split("-")
    )
    assert sent_trace == trace_id
    assert by_id[sent_parent].name == "POST 127.0.0.1"
    assert by_id[by_id[sent_parent].parent_span_id].name == "action circuit_breaker"
    run_lines = [
        json.loads(line) for line in (logs / "executor.log").read_text().splitlines() if line.startswith("{")
    ]
    assert any(
        line.get("flow_name") == "handle-alerts" and line.get("trace_id") == trace_id for line in run_lines
    )
