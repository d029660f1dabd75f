"""Retention: what is older than its age goes, in batches; what something kept refers to stays."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from tasks.retention import apply_retention, retention_markdown
from watchkeeper.config import Retention, WatchkeeperConfig
from watchkeeper.intake.aggregates import request_key
from watchkeeper.store import Store
from watchkeeper.store.remediation import RemediationAction
from watchkeeper.store.reports import ReportPeriod, claim_delivery, save_report
from watchkeeper.store.schema import (
    Alert,
    AlertNotification,
    EvaluationResult,
    FeatureLookup,
    Feedback,
    FlowRunOutbox,
    Incident,
    IncidentEvent,
    IncidentMember,
    ModelTally,
    PipelineRun,
    Prediction,
    PredictionKey,
    PredictionSample,
    WaitingLabel,
    utcnow,
)

NOW = utcnow()
OLD, RECENT = NOW - timedelta(days=200), NOW - timedelta(hours=1)
AGES = Retention(batch_size=2)


def _notification(session, name: str, at) -> AlertNotification:  # noqa: ANN001
    row = AlertNotification(
        digest=name, receiver="r", status="firing", group_key=name, payload={}, received_at=at
    )
    session.add(row)
    session.flush()
    return row


def _alert(session, name: str, at, notification: AlertNotification) -> Alert:  # noqa: ANN001
    row = Alert(
        fingerprint=name,
        starts_at=at,
        status="resolved",
        alertname=name,
        labels={"alertname": name},
        annotations={},
        first_notification_id=notification.id,
        received_at=at,
    )
    session.add(row)
    session.flush()
    return row


def _incident(session, status: str, at, alert: Alert) -> Incident:  # noqa: ANN001
    row = Incident(
        status=status,
        title=alert.alertname,
        opened_at=at,
        last_alert_at=at,
        resolved_at=at if status == "resolved" else None,
        root_cause_alert_id=alert.id,
    )
    session.add(row)
    session.flush()
    session.add(
        IncidentMember(incident_id=row.id, alert_id=alert.id, reason="opened", confidence=1.0, detail="")
    )
    session.add(IncidentEvent(incident_id=row.id, kind="opened", at=at))
    return row


def key(request_id: str, at: datetime, model: str = "m") -> PredictionKey:
    return PredictionKey(
        key=request_key(model, request_id),
        model_version="v1",
        bucket_start=at,
        predicted="1",
        labelled=False,
        received_at=at,
    )


def seed(store: Store) -> None:
    with store.writing() as session:
        for index, at in enumerate((OLD, OLD, OLD, RECENT)):
            session.add(
                Prediction(
                    model_name="m",
                    model_version="v1",
                    request_id=f"r{index}",
                    timestamp=at,
                    features={},
                    prediction=1,
                    error=False,
                    received_at=at,
                )
            )
            session.add(
                Feedback(model_name="m", request_id=f"r{index}", label=1, timestamp=at, received_at=at)
            )
            session.add(key(f"r{index}", at))
            session.add(
                PredictionSample(
                    model_name="m",
                    model_version="v1",
                    request_id=f"r{index}",
                    bucket_start=at,
                    priority=index,
                    timestamp=at,
                    features={},
                    prediction=1,
                    error=False,
                )
            )
            session.add(
                WaitingLabel(
                    model_name="m",
                    request_id=f"w{index}",
                    key=request_key("m", f"w{index}"),
                    label=1,
                    received_at=at,
                )
            )
            session.add(
                ModelTally(
                    model_name="m",
                    model_version="v1",
                    bucket_start=at,
                    measure="class",
                    detail=str(index),
                    total=1.0,
                )
            )
            session.add(
                PipelineRun(
                    pipeline_name="p",
                    run_id=f"run{index}",
                    stage="all",
                    started_at=at,
                    duration_seconds=1.0,
                    records=1,
                    errors=0,
                    source="intake",
                    received_at=at,
                )
            )
            session.add(
                FeatureLookup(
                    feature_store="f",
                    feature_view="v",
                    request_id=f"r{index}",
                    timestamp=at,
                    latency_seconds=0.01,
                    keys=1,
                    errors=0,
                    received_at=at,
                )
            )
            session.add(
                EvaluationResult(
                    kind="model_quality",
                    subject="m",
                    window_start=at - timedelta(hours=1),
                    window_end=at,
                    metric=f"accuracy{index}",
                    value=0.9,
                )
            )
        old_notification = _notification(session, "old", OLD)
        unreferenced = _notification(session, "unreferenced", OLD)
        assert unreferenced.id
        resolved_alert = _alert(session, "resolved-member", OLD, old_notification)
        open_alert = _alert(session, "open-member", OLD, old_notification)
        _alert(session, "lonely", OLD, old_notification)
        resolved = _incident(session, "resolved", OLD, resolved_alert)
        _incident(session, "open", OLD, open_alert)
        session.add(
            RemediationAction(
                idempotency_key="k1",
                incident_id=resolved.id,
                alert_id=resolved_alert.id,
                playbook="pb",
                action="scale",
                target="t",
                decision="run",
                reason="r",
                status="succeeded",
                decided_at=OLD,
            )
        )
        for index, state in enumerate(("dispatched", "pending")):
            session.add(
                FlowRunOutbox(
                    idempotency_key=f"o{index}",
                    deployment="d",
                    parameters={},
                    state=state,
                    created_at=OLD,
                )
            )


def counts(store: Store) -> dict[str, int]:
    tables = {
        "predictions": Prediction,
        "feedback": Feedback,
        "pipeline_runs": PipelineRun,
        "feature_lookups": FeatureLookup,
        "aggregates": ModelTally,
        "samples": PredictionSample,
        "prediction_keys": PredictionKey,
        "waiting_labels": WaitingLabel,
        "evaluation_results": EvaluationResult,
        "incidents": Incident,
        "alerts": Alert,
        "notifications": AlertNotification,
        "outbox": FlowRunOutbox,
        "actions": RemediationAction,
        "events": IncidentEvent,
    }
    with store.reading() as session:
        return {k: session.scalar(select(func.count()).select_from(t)) for k, t in tables.items()}


def test_retention_removes_the_old_in_batches_and_keeps_what_is_referred_to(
    store: Store, example_config: WatchkeeperConfig, tmp_path: Path
) -> None:
    config = example_config.model_copy(update={"retention": AGES})
    seed(store)
    old_report = tmp_path / "reports" / "m" / "drift-old.html"
    new_report = tmp_path / "reports" / "m" / "drift-new.html"
    snapshot = tmp_path / "evidently" / "project" / "snapshots" / "s.json"
    for path in (old_report, new_report, snapshot):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    for path in (old_report, snapshot):
        os.utime(path, (OLD.timestamp(), OLD.timestamp()))
    for end in (OLD, NOW):
        period = ReportPeriod("m", end - timedelta(days=1), end)
        save_report(store, period, {}, "# report", "<html></html>", None)
        claim_delivery(store, period, "slack", "run")

    removed = apply_retention(store, config, tmp_path, NOW)

    assert removed == {
        "predictions": 3,
        "feedback": 3,
        "pipeline_runs": 3,
        "feature_lookups": 3,
        "aggregates": 3,
        "samples": 3,
        "evaluation_results": 3,
        "model_reports": 1,  # the report of the old period, with its delivery record
        "report_deliveries": 1,
        "prediction_keys": 3,
        "waiting_labels": 3,
        "incidents": 1,
        "outbox": 1,
        "alerts": 2,  # the resolved incident's member and the lonely one; the open incident's stays
        "notifications": 1,  # the unreferenced one; the other still has the open incident's alert
        "report_files": 2,
    }
    assert counts(store) == {
        "predictions": 1,
        "feedback": 1,
        "pipeline_runs": 1,
        "feature_lookups": 1,
        "aggregates": 1,
        "samples": 1,
        "prediction_keys": 1,
        "waiting_labels": 1,
        "evaluation_results": 1,
        "incidents": 1,
        "alerts": 1,
        "notifications": 1,
        "outbox": 1,
        "actions": 0,
        "events": 1,
    }
    assert new_report.exists() and not old_report.exists() and not snapshot.exists()
    assert set(apply_retention(store, config, tmp_path, NOW).values()) == {0}
    assert "| predictions | 30 days, 0:00:00 | 3 |" in retention_markdown(removed, config)


def test_keys_stay_for_the_longer_of_the_dedupe_window_and_the_longest_label_horizon(
    store: Store, example_config: WatchkeeperConfig, tmp_path: Path
) -> None:
    model = example_config.models[0]
    short = model.model_copy(
        update={"windows": model.windows.model_copy(update={"label_horizon": timedelta(minutes=30)})}
    )
    longer = short.model_copy(
        update={
            "name": "other",
            "windows": model.windows.model_copy(update={"label_horizon": timedelta(hours=2)}),
        }
    )
    with store.writing() as session:
        for minutes in (20, 50, 70, 130):
            session.add(key(f"r{minutes}", NOW - timedelta(minutes=minutes), model.name))
    both = example_config.model_copy(update={"models": [short, longer]})
    assert apply_retention(store, both, tmp_path, NOW)["prediction_keys"] == 1  # past 2 h
    alone = example_config.model_copy(update={"models": [short]})
    assert apply_retention(store, alone, tmp_path, NOW)["prediction_keys"] == 1  # the 1 h dedupe window
    with store.reading() as session:
        kept = set(session.scalars(select(PredictionKey.key)))
    assert kept == {request_key(model.name, "r20"), request_key(model.name, "r50")}
