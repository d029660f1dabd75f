"""What holds remediation back at the last moment, and what keeps alert labels from steering it:
silences asked of a real Alertmanager, maintenance windows, encoded URLs, allowed hosts, valid
Kubernetes names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.realstack import alertmanager_at, wait_until
from tests.test_incidents import alert
from tests.test_remediation import incident_for, remediation_config, secrets  # noqa: F401 - autouse
from watchkeeper.config import ConfigError, MaintenanceWindow, load_config
from watchkeeper.remediation.decisions import handle_incident
from watchkeeper.remediation.execution import execute_action
from watchkeeper.remediation.playbooks import AlertFacts, Guards, plan
from watchkeeper.remediation.templates import render_url
from watchkeeper.store import Store
from watchkeeper.store.remediation import RemediationAction


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Alertmanager for the module, routing to nowhere."""
    with alertmanager_at(tmp_path_factory.mktemp("alertmanager")) as url:
        yield url


def fired_at(alertmanager: str, labels: dict[str, str]) -> str:
    """Fire the alert at Alertmanager and return the fingerprint it gives it (as its webhook would)."""
    httpx.post(f"{alertmanager}/api/v2/alerts", json=[{"labels": labels}]).raise_for_status()
    listed = wait_until(
        lambda: [a for a in httpx.get(f"{alertmanager}/api/v2/alerts").json() if a["labels"] == labels],
        "the alert at Alertmanager",
    )
    return listed[0]["fingerprint"]


def silence(alertmanager: str, name: str, value: str) -> str:
    now = datetime.now(UTC)
    body = {
        "matchers": [{"name": name, "value": value, "isRegex": False, "isEqual": True}],
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=1)).isoformat(),
        "createdBy": "deployer",
        "comment": "deploying credit-server",
    }
    return httpx.post(f"{alertmanager}/api/v2/silences", json=body).json()["silenceID"]


def test_an_alert_silenced_after_it_was_sent_is_not_acted_on(
    tmp_path: Path, store: Store, standins: tuple, alertmanager: str
) -> None:
    kube, http, smtp = standins
    config = remediation_config(tmp_path, *standins)
    deploy = uuid.uuid4().hex
    body = alert("ModelInferenceLatencyHigh", timedelta(0), model_name="credit_approval", deploy=deploy)
    body["fingerprint"] = fired_at(alertmanager, body["labels"])
    decisions = handle_incident(store, config, incident_for(store, config, body), None)
    silence_id = silence(alertmanager, "deploy", deploy)

    outcomes = [
        execute_action(store, config, r.id, decisions.summary, "run", alertmanager).outcome
        for r in decisions.rows
    ]

    assert outcomes == ["skipped"] * 4
    assert kube.deployments[("ai", "credit-server")]["replicas"] == 2 and not http.requests
    with store.reading() as session:
        row = session.get(RemediationAction, decisions.rows[0].id)
    assert row.reason.endswith(f"the alert is silenced in Alertmanager ({silence_id})")
    assert row.calls == []


def test_an_unreachable_alertmanager_does_not_stop_remediation_and_is_recorded(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    kube, http, smtp = standins
    config = remediation_config(tmp_path, *standins)
    body = alert("ModelInferenceLatencyHigh", timedelta(0), model_name="credit_approval")
    decisions = handle_incident(store, config, incident_for(store, config, body), None)
    nowhere = f"http://127.0.0.1:{free_port()}"

    execution = execute_action(store, config, decisions.rows[0].id, decisions.summary, "run", nowhere)

    assert execution.outcome == "succeeded" and kube.deployments[("ai", "credit-server")]["replicas"] == 4
    with store.reading() as session:
        row = session.get(RemediationAction, decisions.rows[0].id)
    assert f"Alertmanager at {nowhere} could not be asked about silences (ConnectError)" in row.reason
    assert "acted without knowing" in row.calls[0]["note"]


# --- maintenance windows ------------------------------------------------------------------------


def test_maintenance_windows_once_weekly_and_by_label() -> None:
    start = datetime(2026, 11, 28, 2, tzinfo=UTC)
    weekly = MaintenanceWindow(name="deploys", start=start, end=start + timedelta(hours=2), every="7d")
    assert weekly.active_until(start + timedelta(days=14, minutes=30), {}) == start + timedelta(
        days=14, hours=2
    )
    assert weekly.active_until(start + timedelta(days=14, hours=2), {}) is None
    assert weekly.active_until(start - timedelta(minutes=1), {}) is None
    scoped = MaintenanceWindow(
        name="fraud", start=start, end=start + timedelta(hours=1), labels={"model_name": "fraud"}
    )
    assert scoped.active_until(start, {"model_name": "fraud"}) is not None
    assert scoped.active_until(start, {"model_name": "credit"}) is None
    assert scoped.active_until(start + timedelta(days=7), {"model_name": "fraud"}) is None


def test_nothing_acts_inside_a_maintenance_window(tmp_path: Path, store: Store, standins: tuple) -> None:
    now = datetime.now(UTC)
    window = {
        "name": "deploy",
        "start": (now - timedelta(minutes=5)).isoformat(),
        "end": (now + timedelta(hours=1)).isoformat(),
    }
    config = remediation_config(tmp_path, *standins, maintenance_windows=[window])
    body = alert("ModelInferenceLatencyHigh", timedelta(0), model_name="credit_approval")
    decisions = handle_incident(store, config, incident_for(store, config, body), None)
    assert {(r.decision, r.reason.split(" until ")[0]) for r in decisions.rows} == {
        ("skip", "inside maintenance window 'deploy'")
    }


# --- outbound safety -----------------------------------------------------------------------------


def test_label_values_cannot_steer_a_url_a_host_or_a_kubernetes_name(tmp_path: Path, standins: tuple) -> None:
    config = remediation_config(tmp_path, *standins)
    accuracy, latency = config.remediation.playbooks[0], config.remediation.playbooks[1]
    hostile = "../../admin?x=1#"
    [_, breaker, *_] = plan(
        accuracy,
        AlertFacts("ModelAccuracyCritical", "firing", {"model_name": hostile}),
        Guards(),
        datetime.now(UTC),
    )
    assert breaker.decision == "run"
    assert breaker.inputs["url"].endswith("/breaker/..%2F..%2Fadmin%3Fx%3D1%23/open")
    assert render_url("http://h/{m}", {"m": "a/b@evil.example:80"}) == "http://h/a%2Fb%40evil.example%3A80"

    spec = latency.model_copy(
        update={"actions": [latency.actions[0].model_copy(update={"deployment": "{model_name}-server"})]}
    )
    [scale] = plan(
        spec,
        AlertFacts("ModelInferenceLatencyHigh", "firing", {"model_name": "Bad Name;rm"}),
        Guards(),
        datetime.now(UTC),
    )
    assert (scale.decision, scale.reason) == ("skip", "'Bad Name;rm-server' is not a valid Kubernetes name")


def test_a_host_from_a_placeholder_needs_allowed_hosts_and_others_are_refused(
    tmp_path: Path, standins: tuple
) -> None:
    kube, http, smtp = standins
    remediation_config(tmp_path, *standins)
    path = tmp_path / "watchkeeper.yaml"
    data = yaml.safe_load(path.read_text())
    breaker = data["remediation"]["playbooks"][0]["actions"][1]
    breaker["url"] = "http://{region}.gateway.example/breaker/open"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="takes its host from a placeholder: list the hosts it may reach"):
        load_config(path)
    breaker["allowed_hosts"] = ["eu.gateway.example"]
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    facts = lambda region: AlertFacts(  # noqa: E731
        "ModelAccuracyCritical", "firing", {"model_name": "credit_approval", "region": region}
    )
    [_, allowed, *_] = plan(config.remediation.playbooks[0], facts("eu"), Guards(), datetime.now(UTC))
    assert allowed.decision == "run" and allowed.inputs["url"] == "http://eu.gateway.example/breaker/open"
    [_, refused, *_] = plan(
        config.remediation.playbooks[0], facts("attacker.example#"), Guards(), datetime.now(UTC)
    )
    assert refused.decision == "skip"
    assert refused.reason.startswith(
        "host 'attacker.example%23.gateway.example' is not among the action's allowed hosts"
    )


def test_a_secret_is_never_sent_to_a_host_the_action_does_not_allow(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    """Even a row whose inputs were tampered with in the store: the call is refused, not sent."""
    kube, http, smtp = standins
    config = remediation_config(tmp_path, *standins)
    body = alert("ModelAccuracyCritical", timedelta(0), model_name="credit_approval", severity="critical")
    decisions = handle_incident(store, config, incident_for(store, config, body), None)
    breaker = next(r for r in decisions.rows if r.action == "circuit_breaker")
    elsewhere = f"http://localhost:{http.port}/breaker/credit_approval/open"
    with store.writing() as session:
        row = session.get(RemediationAction, breaker.id)
        row.inputs = {**row.inputs, "url": elsewhere}
    execution = execute_action(store, config, breaker.id, decisions.summary, "run")
    assert (
        execution.outcome == "failed" and "not among the action's allowed hosts" in execution.result["error"]
    )
    assert not http.to("/breaker/credit_approval/open")
    # A refusal is final: another run finds nothing to retry.
    assert (
        execute_action(store, config, breaker.id, decisions.summary, "other").outcome == "not claimed: failed"
    )
