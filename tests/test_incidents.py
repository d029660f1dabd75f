"""Stored alerts into stored incidents: grouping, reasons, root cause, resolution, quiet period."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import httpx
import yaml
from sqlalchemy import func, select

from tasks.incidents import correlate_pending_alerts
from tests.conftest import LiveService
from tests.test_cli import run as run_cli
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.settings import DEFAULT_CONFIG
from watchkeeper.store import Store
from watchkeeper.store.alerts import WebhookNotification, store_notification
from watchkeeper.store.schema import Alert, Incident, IncidentEvent, IncidentMember

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
_fingerprints = itertools.count(1)


def alert(name: str, at: timedelta, status: str = "firing", **labels: str) -> dict:
    labels = {"alertname": name, "severity": labels.pop("severity", "warning"), **labels}
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": f"{name} fired"},
        "startsAt": (T0 + at).isoformat(),
        "endsAt": (T0 + at + timedelta(minutes=30)).isoformat() if status == "resolved" else None,
        "fingerprint": labels.get("fp") or f"{name}-{sorted(labels.items())}"[:64],
    }


def notify(store: Store, *alerts: dict) -> None:
    body = {
        "version": "4",
        "groupKey": f"group-{next(_fingerprints)}",
        "status": "firing",
        "receiver": "watchkeeper",
        "alerts": [{k: v for k, v in a.items() if v is not None} for a in alerts],
    }
    store_notification(store, WebhookNotification.model_validate(body), body)


def incidents(store: Store) -> list[tuple[Incident, list[tuple[str, str]]]]:
    with store.reading() as session:
        rows = session.scalars(select(Incident).order_by(Incident.id)).all()
        return [
            (
                row,
                session.execute(
                    select(Alert.alertname, IncidentMember.reason)
                    .join(Alert, Alert.id == IncidentMember.alert_id)
                    .where(IncidentMember.incident_id == row.id)
                    .order_by(Alert.starts_at, Alert.id)
                ).all(),
            )
            for row in rows
        ]


def test_a_pipeline_failure_and_the_model_it_feeds_form_one_incident_rooted_in_the_pipeline(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    notify(
        store,
        alert("PipelineErrorRateHigh", timedelta(0), pipeline_name="credit_feature_pipeline"),
        alert("DataQualityDegraded", timedelta(minutes=2), model_name="credit_approval"),
        alert(
            "ModelAccuracyCritical", timedelta(minutes=4), model_name="credit_approval", severity="critical"
        ),
        alert("WatchkeeperTargetDown", timedelta(minutes=3), service="watchkeeper"),
    )
    outcome = correlate_pending_alerts(store, example_config)
    assert outcome.correlated == 4 and len(outcome.opened) == 2
    (grouped, members), (lonely, lonely_members) = incidents(store)
    assert members == [
        ("PipelineErrorRateHigh", "opened"),
        ("DataQualityDegraded", "causal"),
        ("ModelAccuracyCritical", "causal"),
    ]
    assert grouped.root_cause_service == "feature-store"
    assert grouped.ranking[0]["alertname"] == "PipelineErrorRateHigh"
    assert any("explains 1 of 1" in r for r in grouped.ranking[0]["reasons"])
    assert grouped.severity == "critical" and grouped.status == "open"
    assert lonely_members == [("WatchkeeperTargetDown", "opened")]


def test_correlating_again_changes_nothing(store: Store, example_config: WatchkeeperConfig) -> None:
    notify(store, alert("DataDriftDetected", timedelta(0), model_name="credit_approval"))
    correlate_pending_alerts(store, example_config)
    again = correlate_pending_alerts(store, example_config)
    assert again.correlated == 0
    with store.reading() as session:
        assert session.scalar(select(func.count()).select_from(IncidentMember)) == 1


def test_alerts_further_apart_than_the_window_open_separate_incidents(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    notify(store, alert("DataDriftDetected", timedelta(0), model_name="credit_approval"))
    notify(store, alert("ModelAccuracyDegraded", timedelta(minutes=25), model_name="credit_approval"))
    correlate_pending_alerts(store, example_config)
    assert [len(members) for _, members in incidents(store)] == [1, 1]


def test_an_incident_resolves_with_its_alerts_and_stays_closed_after_the_quiet_period(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    drift = alert("DataDriftDetected", timedelta(0), model_name="credit_approval")
    accuracy = alert("ModelAccuracyDegraded", timedelta(minutes=1), model_name="credit_approval")
    notify(store, drift, accuracy)
    correlate_pending_alerts(store, example_config)
    notify(store, {**drift, "status": "resolved", "endsAt": (T0 + timedelta(minutes=5)).isoformat()})
    assert correlate_pending_alerts(store, example_config).resolved == []
    notify(store, {**accuracy, "status": "resolved", "endsAt": (T0 + timedelta(minutes=6)).isoformat()})
    outcome = correlate_pending_alerts(store, example_config)
    [(incident, _)] = incidents(store)
    assert outcome.resolved == [incident.id]
    assert incident.status == "resolved" and incident.resolved_at == T0 + timedelta(minutes=6)

    # Within the quiet period (5 minutes) a related alert reopens it; after it, a new incident opens.
    notify(store, alert("ModelAccuracyCritical", timedelta(minutes=9), model_name="credit_approval"))
    assert correlate_pending_alerts(store, example_config).reopened == [incident.id]
    notify(
        store, alert("PipelineErrorRateHigh", timedelta(minutes=9), pipeline_name="credit_feature_pipeline")
    )
    correlate_pending_alerts(store, example_config)
    notify(
        store,
        {
            **alert("ModelAccuracyCritical", timedelta(minutes=9), model_name="credit_approval"),
            "status": "resolved",
            "endsAt": (T0 + timedelta(minutes=10)).isoformat(),
        },
        {
            **alert("PipelineErrorRateHigh", timedelta(minutes=9), pipeline_name="credit_feature_pipeline"),
            "status": "resolved",
            "endsAt": (T0 + timedelta(minutes=10)).isoformat(),
        },
    )
    correlate_pending_alerts(store, example_config)
    notify(store, alert("DataQualityDegraded", timedelta(minutes=16), model_name="credit_approval"))
    correlate_pending_alerts(store, example_config)
    rows = incidents(store)
    assert [row.status for row, _ in rows] == ["resolved", "open"]
    with store.reading() as session:
        kinds = session.scalars(
            select(IncidentEvent.kind)
            .where(IncidentEvent.incident_id == incident.id)
            .order_by(IncidentEvent.id)
        ).all()
    assert kinds[0] == "opened" and kinds.count("resolved") == 2 and "reopened" in kinds


def test_the_read_api_lists_alerts_and_incidents_and_shows_one_whole(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    notify(
        store,
        alert("PipelineErrorRateHigh", timedelta(0), pipeline_name="credit_feature_pipeline"),
        alert("ModelAccuracyDegraded", timedelta(minutes=1), model_name="credit_approval"),
    )
    notify(
        store,
        {
            **alert("DataDriftDetected", timedelta(minutes=30), model_name="credit_approval"),
            "status": "resolved",
            "endsAt": (T0 + timedelta(minutes=31)).isoformat(),
        },
    )
    correlate_pending_alerts(store, example_config)
    headers = {"Authorization": "Bearer reader"}
    with LiveService(example_config, store, api_token="reader") as live:
        assert httpx.get(f"{live.url}/v1/incidents").status_code == 401
        resolved = httpx.get(f"{live.url}/v1/alerts", params={"status": "resolved"}, headers=headers).json()
        assert [a["alertname"] for a in resolved["alerts"]] == ["DataDriftDetected"]
        bad = httpx.get(f"{live.url}/v1/alerts", params={"status": "gone"}, headers=headers)
        assert bad.status_code == 422 and "status" in bad.text
        listed = httpx.get(f"{live.url}/v1/incidents", params={"status": "open"}, headers=headers).json()
        [incident] = listed["incidents"]
        assert incident["alerts"] == 2 and incident["root_cause"]["subject"] == "feature-store"
        detail = httpx.get(f"{live.url}/v1/incidents/{incident['id']}", headers=headers).json()
        assert [(m["alertname"], m["reason"]) for m in detail["members"]] == [
            ("PipelineErrorRateHigh", "opened"),
            ("ModelAccuracyDegraded", "dependency"),
        ]
        assert detail["members"][1]["confidence"] > 0.5
        assert detail["members"][1]["detail"] == "credit-approval-api depends on feature-store"
        assert [c["subject"] for c in detail["ranking"]] == ["feature-store", "credit-approval-api"]
        assert [e["kind"] for e in detail["timeline"]][:2] == ["opened", "alert_joined"]
        assert httpx.get(f"{live.url}/v1/incidents/999", headers=headers).status_code == 404


def test_the_cli_prints_incidents_as_tables_and_json(
    tmp_path: Path, example_config: WatchkeeperConfig, store: Store
) -> None:
    run = partial(run_cli, WATCHKEEPER_DATABASE_URL=store.url.render_as_string(hide_password=False))
    notify(store, alert("DataDriftDetected", timedelta(0), model_name="credit_approval"))
    correlate_pending_alerts(store, example_config)
    listed = run("incidents", "--json", home=tmp_path)
    assert listed.returncode == 0, listed.stderr
    [incident] = json.loads(listed.stdout)
    assert incident["title"] == "DataDriftDetected on credit-approval-api"
    table = run("incidents", str(incident["id"]), home=tmp_path)
    assert "root-cause ranking" in table.stdout and "credit-approval-api" in table.stdout
    alerts_table = run("alerts", "--status", "firing", home=tmp_path)
    assert "DataDriftDetected" in alerts_table.stdout and "credit_approval" in alerts_table.stdout
    missing = run("incidents", "42", home=tmp_path)
    assert missing.returncode == 2 and "no incident 42" in missing.stderr


def host_alert(name: str, at: timedelta, instance: str, severity: str = "warning", **labels: str) -> dict:
    """A host rule's alert as Prometheus labels it: its service is its node exporter's instance."""
    return alert(
        name,
        at,
        severity=severity,
        team="platform_engineering",
        service=instance,
        instance=instance,
        job="node",
        **labels,
    )


def hosts_config(example_config: WatchkeeperConfig) -> WatchkeeperConfig:
    """The example, its credit model's API and the model server on one GPU node, the feature store on
    a node of its own."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["topology"]["hosts"] = {
        "gpu-node-1:9100": ["credit-approval-api", "model-server"],
        "batch-node-2:9100": ["feature-store"],
    }
    config = WatchkeeperConfig.model_validate(data)
    assert config.models == example_config.models
    return config


def test_a_busy_host_joins_its_model_s_incident_as_the_root_cause(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    """Latency rises, then traffic falls, on the credit model; the CPU alert of the node serving it
    comes last (its rule waits 5 minutes) and is ranked the cause. A disk filling on a host that
    runs none of the model's services is a problem of its own."""
    config = hosts_config(example_config)
    notify(
        store,
        alert(
            "ModelInferenceLatencyHigh", timedelta(0), model_name="credit_approval", service="model-inference"
        ),
        alert(
            "ModelThroughputLow",
            timedelta(minutes=1),
            model_name="credit_approval",
            service="model-inference",
        ),
        host_alert("InfrastructureCPUHigh", timedelta(minutes=3), "gpu-node-1:9100"),
        host_alert(
            "HostDiskWillFill",
            timedelta(minutes=3),
            "web-node-9:9100",
            "critical",
            mountpoint="/",
            device="/dev/sda1",
        ),
    )
    outcome = correlate_pending_alerts(store, config)
    assert outcome.correlated == 4 and len(outcome.opened) == 2
    (model, members), (disk, disk_members) = incidents(store)
    assert members == [
        ("ModelInferenceLatencyHigh", "opened"),
        ("ModelThroughputLow", "causal"),
        ("InfrastructureCPUHigh", "causal"),
    ]
    assert model.root_cause_service == "gpu-node-1:9100"
    assert model.ranking[0]["alertname"] == "InfrastructureCPUHigh"
    assert any("explains 1 of 1" in reason for reason in model.ranking[0]["reasons"])
    assert disk_members == [("HostDiskWillFill", "opened")] and disk.root_cause_service == "web-node-9:9100"


def test_a_host_alert_after_its_services_failures_are_explained_is_not_their_cause(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    """The feature pipeline fails, the credit model's data and accuracy follow; minutes later the GPU
    node serving the model reports memory pressure. The model's failure already has its cause (the
    feature store it depends on alerted first), so the host's alert is a second problem, not the root
    of the first."""
    config = hosts_config(example_config)
    notify(
        store,
        alert("PipelineErrorRateHigh", timedelta(0), pipeline_name="credit_feature_pipeline"),
        alert("DataQualityDegraded", timedelta(minutes=2), model_name="credit_approval"),
        alert(
            "ModelAccuracyCritical", timedelta(minutes=4), model_name="credit_approval", severity="critical"
        ),
        host_alert("HostMemoryPressure", timedelta(minutes=6), "gpu-node-1:9100"),
    )
    correlate_pending_alerts(store, config)
    (pipeline, members), (host, host_members) = incidents(store)
    assert [name for name, _ in members] == [
        "PipelineErrorRateHigh",
        "DataQualityDegraded",
        "ModelAccuracyCritical",
    ]
    assert pipeline.root_cause_service == "feature-store"
    assert host_members == [("HostMemoryPressure", "opened")] and host.root_cause_service == "gpu-node-1:9100"


def etl_topology() -> WatchkeeperConfig:
    """The feature pipeline on an ETL node of its own, the model's API on a GPU node."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["topology"]["services"] = {
        "scoring-api": ["feature-etl"],
        "feature-etl": [],
    }
    data["topology"]["hosts"] = {"etl-7.dc2:9100": ["feature-etl"], "gpu-3.dc2:9100": ["scoring-api"]}
    for model in data["models"]:
        model["service"] = "scoring-api"
    for owner in [*data["pipelines"], *data["feature_stores"]]:
        owner["service"] = "feature-etl"
    return WatchkeeperConfig.model_validate(data)


def test_a_disk_filling_on_the_pipelines_host_is_the_root_of_what_its_failures_cause(store: Store) -> None:
    """Another topology: the ETL node's data disk fills. The pipeline's stages start failing, the
    model's records fail their checks, its accuracy collapses: one incident, rooted in the host.
    The model's serving node, healthy, never enters it."""
    config = etl_topology()
    notify(
        store,
        host_alert(
            "HostDiskWillFill",
            timedelta(0),
            "etl-7.dc2:9100",
            "critical",
            mountpoint="/data",
            device="/dev/sdb1",
        ),
        alert(
            "PipelineErrorRateCritical",
            timedelta(minutes=3),
            pipeline_name="credit_feature_pipeline",
            severity="critical",
        ),
        alert(
            "DataRecordsFailingChecksCritical",
            timedelta(minutes=4),
            model_name="credit_approval",
            severity="critical",
        ),
        alert(
            "ModelAccuracyCollapse", timedelta(minutes=6), model_name="credit_approval", severity="critical"
        ),
    )
    outcome = correlate_pending_alerts(store, config)
    assert len(outcome.opened) == 1
    [(incident, members)] = incidents(store)
    assert [name for name, _ in members] == [
        "HostDiskWillFill",
        "PipelineErrorRateCritical",
        "DataRecordsFailingChecksCritical",
        "ModelAccuracyCollapse",
    ]
    assert incident.root_cause_service == "etl-7.dc2:9100"
    assert [c["subject"] for c in incident.ranking][:2] == ["etl-7.dc2:9100", "feature-etl"]


def test_a_full_disk_roots_the_failures_its_early_warning_came_too_early_to_join(store: Store) -> None:
    """HostDiskWillFill fired two hours before the disk filled: too early (by the correlation
    window) to join what the full disk then broke. HostDiskFull starts with the failures, and the
    incident is rooted in the host."""
    config = etl_topology()
    disk = {"mountpoint": "/data", "device": "/dev/sdb1"}
    notify(
        store,
        host_alert("HostDiskWillFill", timedelta(0), "etl-7.dc2:9100", "critical", **disk),
        host_alert("HostDiskFull", timedelta(hours=2), "etl-7.dc2:9100", "critical", **disk),
        alert(
            "PipelineErrorRateCritical",
            timedelta(hours=2, minutes=2),
            pipeline_name="credit_feature_pipeline",
            severity="critical",
        ),
        alert(
            "ModelAccuracyCollapse",
            timedelta(hours=2, minutes=5),
            model_name="credit_approval",
            severity="critical",
        ),
    )
    correlate_pending_alerts(store, config)
    (early, early_members), (full, members) = incidents(store)
    assert early_members == [("HostDiskWillFill", "opened")]
    assert [name for name, _ in members] == [
        "HostDiskFull",
        "PipelineErrorRateCritical",
        "ModelAccuracyCollapse",
    ]
    assert full.root_cause_service == "etl-7.dc2:9100" and full.ranking[0]["alertname"] == "HostDiskFull"
