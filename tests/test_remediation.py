"""Guarded remediation: decisions and their reasons, guards held in the store, actions against
stand-ins that speak the real protocols (Kubernetes through the official client, Slack, PagerDuty,
a Jira-compatible API, SMTP)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from sqlalchemy import select

from tasks.incidents import correlate_pending_alerts
from tests.conftest import LiveService
from tests.standins import Failure, HttpRecorder, KubernetesStandIn, SmtpStandIn
from tests.test_cli import run
from tests.test_incidents import alert, notify
from watchkeeper.config import WatchkeeperConfig, load_config
from watchkeeper.remediation.decisions import handle_incident
from watchkeeper.remediation.execution import execute_action
from watchkeeper.remediation.playbooks import AlertFacts, Guards, plan
from watchkeeper.settings import DEFAULT_CONFIG
from watchkeeper.store import Store
from watchkeeper.store.actions import set_remediation
from watchkeeper.store.remediation import RemediationAction
from watchkeeper.store.schema import Incident

NOW = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
SEED_ALERT = {
    "alertname": "ModelAccuracyCritical",
    "labels": {"severity": "critical", "model_name": "fraud_detection_v2", "team": "ml_engineering"},
    "annotations": {"description": "Model accuracy dropped to 0.72, below critical threshold"},
}


def remediation_config(
    tmp_path: Path, kube: KubernetesStandIn, http: HttpRecorder, smtp: SmtpStandIn, **overrides: object
) -> WatchkeeperConfig:
    """The example config with enabled playbooks aimed at the stand-ins."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["notifications"] = [
        {"name": "slack", "kind": "slack", "secret": {"env": "TEST_SLACK_URL"}},
        {
            "name": "pager",
            "kind": "pagerduty",
            "url": f"{http.url}/pagerduty/v2/enqueue",
            "secret": {"env": "TEST_PD_KEY"},
        },
        {"name": "hook", "kind": "webhook", "url": f"{http.url}/hook"},
        {
            "name": "mail",
            "kind": "email",
            "url": f"smtp://127.0.0.1:{smtp.port}",
            "to": ["oncall@example.com"],
        },
    ]
    data.pop("reports")  # it names the example's Slack target
    fallback = {
        "action": "fallback_model",
        "url": f"{http.url}/router/activate_fallback",
        "stable_models": {"credit_approval": "credit_approval_v0_stable"},
    }
    data["remediation"] = {
        "max_actions_per_hour": 10,
        "action_timeout": "2s",
        "kubernetes": {"kubeconfig": str(kube.kubeconfig(tmp_path))},
        "playbooks": [
            {
                "name": "accuracy-critical",
                "enabled": True,
                "match": {"alertname": "ModelAccuracyCritical"},
                "actions": [
                    fallback,
                    {
                        "action": "circuit_breaker",
                        "url": f"{http.url}/breaker/{{model_name}}/open",
                        "secret": {"env": "TEST_GATEWAY_TOKEN"},
                    },
                    {"action": "ticket", "url": f"{http.url}/rest/api/2", "project": "MLOPS"},
                    {"action": "notify", "target": "pager"},
                ],
            },
            {
                "name": "latency",
                "enabled": True,
                "cooldown": "15m",
                "match": {"alertname": "ModelInferenceLatencyHigh"},
                "actions": [
                    {
                        "action": "scale",
                        "namespace": "ai",
                        "deployment": "credit-server",
                        "step": 2,
                        "max_replicas": 5,
                    },
                    {"action": "invalidate_cache", "url": f"{http.url}/cache/flush"},
                    {"action": "notify", "target": "slack"},
                    {"action": "notify", "target": "mail"},
                ],
            },
            {
                "name": "pipeline",
                "enabled": True,
                "match": {"alertname": "PipelineErrorRateHigh"},
                "actions": [
                    {"action": "restart", "namespace": "ai", "deployment": "feature-pipeline"},
                    {
                        "action": "fallback_model",
                        "via": "service",
                        "namespace": "ai",
                        "service": "credit-api",
                        "stable_models": {"credit_approval": "credit_approval_v0_stable"},
                    },
                    {"action": "notify", "target": "hook"},
                ],
            },
            {
                "name": "quality",
                "require_approval": True,
                "enabled": True,
                "match": {"alertname": "DataQualityDegraded"},
                "actions": [
                    {
                        "action": "scale",
                        "namespace": "ai",
                        "deployment": "credit-server",
                        "step": 1,
                        "max_replicas": 5,
                    }
                ],
            },
        ],
        **overrides,
    }
    path = tmp_path / "watchkeeper.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def config_path(tmp_path: Path) -> Path:
    """Where `remediation_config` wrote the file, for a stack to start with."""
    return tmp_path / "watchkeeper.yaml"


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch, standins: tuple) -> None:
    _, http, _ = standins
    monkeypatch.setenv("TEST_SLACK_URL", f"{http.url}/slack/T000/B000/XXXX")
    monkeypatch.setenv("TEST_PD_KEY", "R0UT1NGKEY")
    monkeypatch.setenv("TEST_GATEWAY_TOKEN", "g4teway")


def incident_for(store: Store, config: WatchkeeperConfig, *alerts: dict) -> int:
    notify(store, *alerts)
    outcome = correlate_pending_alerts(store, config)
    return (outcome.opened or outcome.updated)[0]


def execute_row(
    store: Store, config: WatchkeeperConfig, row_id: int, summary, claimant: str = "test"
) -> dict:
    """Claim and execute one row as one run would; its result (or why it did not run)."""
    execution = execute_action(store, config, row_id, summary, claimant)
    return (
        execution.result
        if execution.outcome == "succeeded"
        else {"outcome": str(execution.outcome), **execution.result}
    )


def run_all(store: Store, config: WatchkeeperConfig, incident_id: int) -> list[dict]:
    """What handle-alerts does for an incident: record what it owes, then run what is runnable."""
    decisions = handle_incident(store, config, incident_id, None)
    return [
        execute_row(store, config, r.id, decisions.summary) for r in decisions.rows if r.status == "pending"
    ]


def revert(store: Store, config: WatchkeeperConfig, incident_id: int) -> list[dict]:
    """What handle-alerts does for a resolved incident: record its follow-ups, then run them."""
    decisions = handle_incident(store, config, incident_id, None)
    return [
        {"action": r.action, **execute_row(store, config, r.id, decisions.summary)}
        for r in decisions.rows
        if r.status == "pending"
    ]


# --- decisions, pure -------------------------------------------------------------------------


def test_every_decision_has_its_reason(tmp_path: Path, standins: tuple) -> None:
    config = remediation_config(tmp_path, *standins)
    playbook = config.remediation.playbooks[1]
    facts = AlertFacts("ModelInferenceLatencyHigh", "firing", {"model_name": "credit_approval"})
    decisions = lambda guards: [(a.action, a.decision) for a in plan(playbook, facts, guards, NOW)]  # noqa: E731
    assert decisions(Guards()) == [
        ("scale", "run"),
        ("invalidate_cache", "run"),
        ("notify", "run"),
        ("notify", "run"),
    ]
    assert decisions(Guards(remediation_on=False)) == [
        ("scale", "skip"),
        ("invalidate_cache", "skip"),
        ("notify", "run"),
        ("notify", "run"),
    ]
    recent = {("scale", "deployment/ai/credit-server"): NOW - timedelta(minutes=5)}
    cooled = plan(playbook, facts, Guards(last_run=recent), NOW)
    assert cooled[0].decision == "skip" and cooled[0].reason.startswith("cooldown: ran at")
    assert decisions(Guards(runs_last_hour=9, max_per_hour=10))[:2] == [
        ("scale", "run"),
        ("invalidate_cache", "skip"),
    ]
    assert plan(playbook, AlertFacts("ModelInferenceLatencyHigh", "resolved", {}), Guards(), NOW) == []
    disabled = playbook.model_copy(update={"enabled": False})
    assert {a.decision for a in plan(disabled, facts, Guards(), NOW)} == {"dry_run"}
    no_model = plan(
        config.remediation.playbooks[0], AlertFacts("ModelAccuracyCritical", "firing", {}), Guards(), NOW
    )
    assert (no_model[0].decision, no_model[0].reason) == ("skip", "the alert has no 'model_name' label")


def test_playbooks_test_lists_the_seeds_four_actions_and_none_once_resolved(tmp_path: Path) -> None:
    alert_file = tmp_path / "alert.json"
    alert_file.write_text(json.dumps(SEED_ALERT))
    result = run("playbooks", "test", str(alert_file), "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["playbook"] == "model-accuracy-critical"
    assert [(a["action"], a["decision"]) for a in verdict["actions"]] == [
        ("fallback_model", "dry_run"),
        ("circuit_breaker", "dry_run"),
        ("ticket", "dry_run"),
        ("notify", "dry_run"),
    ]
    assert all(a["target"] and a["reason"] for a in verdict["actions"])
    alert_file.write_text(json.dumps({**SEED_ALERT, "status": "resolved"}))
    resolved = json.loads(run("playbooks", "test", str(alert_file), "--json", home=tmp_path).stdout)
    assert resolved["actions"] == []


# --- actions against the stand-ins -----------------------------------------------------------


def test_accuracy_playbook_falls_back_breaks_the_circuit_opens_a_ticket_and_pages_once(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    kube, http, smtp = standins
    config = remediation_config(tmp_path, *standins)
    accuracy = alert("ModelAccuracyCritical", timedelta(0), model_name="credit_approval", severity="critical")
    incident_id = incident_for(store, config, accuracy)
    results = run_all(store, config, incident_id)
    assert [
        r.get("routed_to") or r.get("ticket_id") or r.get("sent") or r["status_code"] for r in results
    ] == ["credit_approval_v0_stable", 200, "MLOPS-1", "pagerduty"]
    [router] = http.to("/router/activate_fallback")
    assert router.body == {
        "model": "credit_approval",
        "fallback_model": "credit_approval_v0_stable",
        "active": True,
    }
    [breaker] = http.to("/breaker/credit_approval/open")
    assert breaker.headers["authorization"] == "Bearer g4teway"
    [issue] = http.to("/rest/api/2/issue")
    assert (
        issue.body["fields"]["project"] == {"key": "MLOPS"}
        and f"incident-{incident_id}" in issue.body["fields"]["labels"]
    )
    [page] = http.to("/pagerduty/v2/enqueue")
    assert page.body["routing_key"] == "R0UT1NGKEY" and page.body["event_action"] == "trigger"
    assert page.body["dedup_key"] == f"watchkeeper-incident-{incident_id}"
    with store.reading() as session:
        assert session.get(Incident, incident_id).ticket_id == "MLOPS-1"

    assert run_all(store, config, incident_id) == []  # decided and done once: a retried run repeats nothing
    assert len(http.to("/pagerduty/v2/enqueue")) == 1

    notify(
        store,
        {
            **accuracy,
            "status": "resolved",
            "endsAt": (accuracy_start(accuracy) + timedelta(minutes=5)).isoformat(),
        },
    )
    assert correlate_pending_alerts(store, config).resolved == [incident_id]
    reverted = revert(store, config, incident_id)
    assert {r["action"] for r in reverted} == {"fallback_model", "ticket", "notify"}
    assert http.to("/router/activate_fallback")[-1].body["active"] is False
    assert http.to("/rest/api/2/issue/MLOPS-1/comment")
    resolve = http.to("/pagerduty/v2/enqueue")[-1].body
    assert (resolve["event_action"], resolve["dedup_key"]) == (
        "resolve",
        f"watchkeeper-incident-{incident_id}",
    )
    assert revert(store, config, incident_id) == []


def age_the_audit_trail(store: Store, by: timedelta) -> None:
    """As if every recorded decision had been taken `by` earlier: past cooldowns and the hourly budget."""
    with store.writing() as session:
        for row in session.scalars(select(RemediationAction)):
            row.decided_at -= by


def accuracy_start(body: dict) -> datetime:
    return datetime.fromisoformat(body["startsAt"])


def test_scale_respects_the_ceiling_and_the_cooldown_and_mail_and_slack_go_out(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    kube, http, smtp = standins
    config = remediation_config(tmp_path, *standins)
    first = incident_for(
        store, config, alert("ModelInferenceLatencyHigh", timedelta(0), model_name="credit_approval")
    )
    scaled, flushed, slack, mail = run_all(store, config, first)
    assert scaled == {"changed": True, "previous_replicas": 2, "replicas": 4}
    assert kube.deployments[("ai", "credit-server")]["replicas"] == 4
    assert flushed == {"status_code": 200}
    assert http.to("/slack/T000/B000/XXXX")[0].body["text"].startswith(f"[Watchkeeper] incident {first} open")
    assert smtp.messages and smtp.messages[0]["To"] == "oncall@example.com"

    # A second incident an hour later on the same deployment: past the cooldown, up to the ceiling.
    later = alert(
        "ModelInferenceLatencyHigh", timedelta(minutes=40), model_name="credit_approval", fp="second"
    )
    second = incident_for(store, config, later)
    decisions = handle_incident(store, config, second, None)
    assert decisions.rows[0].decision == "skip" and "cooldown" in decisions.rows[0].reason
    age_the_audit_trail(store, timedelta(hours=1))
    third = incident_for(
        store,
        config,
        alert("ModelInferenceLatencyHigh", timedelta(minutes=80), model_name="credit_approval", fp="third"),
    )
    assert run_all(store, config, third)[0] == {"changed": True, "previous_replicas": 4, "replicas": 5}
    age_the_audit_trail(store, timedelta(hours=1))
    fourth = incident_for(
        store,
        config,
        alert("ModelInferenceLatencyHigh", timedelta(minutes=120), model_name="credit_approval", fp="fourth"),
    )
    assert run_all(store, config, fourth)[0] == {
        "changed": False,
        "replicas": 5,
        "note": "already at the ceiling of 5 replicas",
    }


def test_kubernetes_failures_are_recorded_and_the_retry_succeeds(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    kube, http, smtp = standins
    config = remediation_config(tmp_path, *standins)
    incident_id = incident_for(
        store,
        config,
        alert(
            "PipelineErrorRateHigh",
            timedelta(0),
            pipeline_name="credit_feature_pipeline",
            model_name="credit_approval",
        ),
    )
    decisions = handle_incident(store, config, incident_id, None)
    restart, fallback, hook = decisions.rows
    kube.failures.extend([Failure(500), Failure(409), Failure(0, delay=3)])
    for expected in (ApiException, ApiException, Exception):
        with pytest.raises(expected):
            execute_row(store, config, restart.id, decisions.summary)
    with store.reading() as session:
        row = session.get(RemediationAction, restart.id)
        assert row.status == "failed" and "Timeout" in row.result["error"]
    result = execute_row(store, config, restart.id, decisions.summary)
    assert (
        kube.deployments[("ai", "feature-pipeline")]["annotations"]["kubectl.kubernetes.io/restartedAt"]
        == result["restarted_at"]
    )
    assert (
        execute_row(store, config, fallback.id, decisions.summary)["selector"] == "credit_approval_v0_stable"
    )
    assert kube.services[("ai", "credit-api")] == {"app": "credit", "model": "credit_approval_v0_stable"}
    execute_row(store, config, hook.id, decisions.summary)
    assert http.to("/hook")[0].body["incident"] == incident_id
    patches = [r for r in kube.requests if r.method == "PATCH"]
    assert patches[0].headers["content-type"] in {
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
    }


def test_the_kill_switch_and_cooldowns_survive_a_restart_of_the_service(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    config = remediation_config(tmp_path, *standins)
    headers = {"Authorization": "Bearer ops"}
    with LiveService(config, store, api_token="ops") as live:
        assert httpx.put(f"{live.url}/v1/remediation", json={"enabled": False}).status_code == 401
        switched = httpx.put(
            f"{live.url}/v1/remediation",
            json={"enabled": False, "changed_by": "someone else"},
            headers=headers,
        ).json()
        assert switched == {"enabled": False, "changed_by": "operator (WATCHKEEPER_API_TOKEN)"}
    restarted = Store(store.url.render_as_string(hide_password=False))
    with LiveService(config, restarted, api_token="ops") as live:
        assert httpx.get(f"{live.url}/v1/remediation", headers=headers).json() == {"enabled": False}
    incident_id = incident_for(
        restarted, config, alert("ModelInferenceLatencyHigh", timedelta(0), model_name="credit_approval")
    )
    decisions = handle_incident(restarted, config, incident_id, None)
    assert [(r.action, r.decision) for r in decisions.rows] == [
        ("scale", "skip"),
        ("invalidate_cache", "skip"),
        ("notify", "run"),
        ("notify", "run"),
    ]
    assert decisions.rows[0].reason == "remediation is switched off (kill switch)"
    set_remediation(restarted, True, "test")
    with LiveService(config, Store(store.url.render_as_string(hide_password=False)), api_token="ops") as live:
        actions = httpx.get(
            f"{live.url}/v1/actions", params={"incident": incident_id}, headers=headers
        ).json()["actions"]
        assert {a["decision"] for a in actions} == {"skip", "run"}
        report = httpx.get(f"{live.url}/v1/actions/report", headers=headers).json()
        assert report["decisions"] == 4 and report["by_action"]["scale"] == {"skip": 1}

    # The scale-up that runs now starts a cooldown that a fresh process, reading the same store, honours.
    later = alert(
        "ModelInferenceLatencyHigh", timedelta(minutes=30), model_name="credit_approval", fp="later"
    )
    assert run_all(restarted, config, incident_for(restarted, config, later))[0]["changed"] is True
    again = alert(
        "ModelInferenceLatencyHigh", timedelta(minutes=60), model_name="credit_approval", fp="again"
    )
    after_restart = Store(store.url.render_as_string(hide_password=False))
    [scale, *_] = handle_incident(
        after_restart, config, incident_for(after_restart, config, again), None
    ).rows
    assert scale.decision == "skip" and scale.reason.startswith("cooldown: ran at")
