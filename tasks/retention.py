"""Retention: delete what Watchkeeper keeps once it is older than its configured age.

Deletes run in batches of `retention.batch_size` rows, each batch its own short transaction, so
the intake and the flows never wait long behind a purge, and a purge stopped halfway (a crash, a
timeout) has removed whole batches and resumes where it left off next time.

What goes, oldest first, and what stays:
- predictions and feedback (by `timestamp`, when it happened), pipeline runs (by `started_at`),
  the intake's aggregates and samples (by `bucket_start`) and evaluation results (by `window_end`);
- prediction keys once both the dedupe window and their model's label horizon have passed, and
  labels still waiting for their prediction after the longest label horizon (by `received_at`);
- resolved incidents (by `resolved_at`) with their members, timeline and remediation decisions;
  open incidents stay whatever their age;
- alerts (by `starts_at`) that no remaining incident or decision refers to, then notifications
  (by `received_at`) that no remaining alert or owed run refers to; owed runs are kept until
  dispatched (by `created_at`);
- model reports and their delivery records (by the end of their period), HTML drift reports and
  Evidently snapshots under the home (by modification time).
Counters are tallies, folded by collect-model-metrics, so they do not grow with history.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, select, tuple_

from watchkeeper.config import WatchkeeperConfig
from watchkeeper.markdown import table
from watchkeeper.store import Store
from watchkeeper.store.remediation import RemediationAction
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
    IncidentStatus,
    ModelReport,
    ModelTally,
    PipelineRun,
    Prediction,
    PredictionKey,
    PredictionSample,
    ReportDelivery,
    WaitingLabel,
)

# Bound parameters in one DELETE by key, below SQLite's limit (32,766) and PostgreSQL's (65,535).
KEY_PARAMETERS = 30_000
# Files a retention pass removes under the home, by folder and pattern.
REPORT_FILES = (("reports", "**/*.html"), ("evidently", "**/snapshots/*.json"))


def purge_rows(
    store: Store, table: Any, condition: ColumnElement[bool], batch_size: int, dependents: Sequence[Any] = ()
) -> int:
    """Delete the rows of `table` matching `condition`, `batch_size` per transaction, each with the
    rows of `dependents` (tables with an `incident_id`) that refer to it; returns how many this pass
    deleted (a concurrent pass deleting the same batch counts nothing twice)."""
    removed = 0
    while True:
        with store.writing() as session:
            query = select(table.id).where(condition).order_by(table.id).limit(batch_size)
            ids = session.scalars(query).all()
            if ids:
                for dependent in dependents:
                    session.execute(delete(dependent).where(dependent.incident_id.in_(ids)))
                removed += session.execute(delete(table).where(table.id.in_(ids))).rowcount
        if len(ids) < batch_size:
            return removed


def purge_by_key(store: Store, table: Any, condition: ColumnElement[bool], batch_size: int) -> int:
    """`purge_rows` for the tables without an `id`, by their primary key."""
    removed = 0
    columns = list(table.__table__.primary_key)
    key = tuple_(*columns) if len(columns) > 1 else columns[0]
    while True:
        with store.writing() as session:
            rows = session.execute(select(*columns).where(condition).limit(batch_size)).all()
            found = [tuple(row) if len(columns) > 1 else row[0] for row in rows]
            per_statement = KEY_PARAMETERS // len(columns)
            for start in range(0, len(found), per_statement):
                chunk = found[start : start + per_statement]
                removed += session.execute(delete(table).where(key.in_(chunk))).rowcount
        if len(found) < batch_size:
            return removed


def purge_old(store: Store, table: Any, condition: ColumnElement[bool], batch_size: int) -> int:
    """`purge_rows` for a table with an `id`, else `purge_by_key`."""
    purge = purge_rows if "id" in table.__table__.c else purge_by_key
    return purge(store, table, condition, batch_size)


def key_lifetime(config: WatchkeeperConfig) -> timedelta:
    """How long a prediction's key is kept: the longer of the dedupe window and the longest label
    horizon. A key holds a hash, not its model, so the horizon of each model is kept by the label's
    join (`store.intake`), not here."""
    return max(config.intake.dedupe_window, *(m.windows.label_horizon for m in config.models))


def purge_incidents(store: Store, cutoff: datetime, batch_size: int) -> int:
    """Delete incidents resolved before `cutoff`, with their members, events and decisions."""
    resolved = and_(Incident.status == IncidentStatus.RESOLVED, Incident.resolved_at < cutoff)
    return purge_rows(
        store, Incident, resolved, batch_size, dependents=(RemediationAction, IncidentEvent, IncidentMember)
    )


def _unreferenced_alert(cutoff: datetime) -> ColumnElement[bool]:
    return and_(
        Alert.starts_at < cutoff,
        ~exists().where(IncidentMember.alert_id == Alert.id),
        ~exists().where(Incident.root_cause_alert_id == Alert.id),
        ~exists().where(RemediationAction.alert_id == Alert.id),
    )


def _unreferenced_notification(cutoff: datetime) -> ColumnElement[bool]:
    return and_(
        AlertNotification.received_at < cutoff,
        ~exists().where(Alert.first_notification_id == AlertNotification.id),
        ~exists().where(FlowRunOutbox.notification_id == AlertNotification.id),
    )


def purge_files(home: Path, cutoff: datetime) -> int:
    """Delete report and snapshot files under `home` last modified before `cutoff`."""
    removed = 0
    limit = cutoff.timestamp()
    for folder, pattern in REPORT_FILES:
        for path in (home / folder).glob(pattern):
            if path.is_file() and path.stat().st_mtime < limit:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def apply_retention(store: Store, config: WatchkeeperConfig, home: Path, now: datetime) -> dict[str, int]:
    """One retention pass; returns how many rows (or files) of each kind it removed, in order."""
    retention = config.retention
    ages = retention.ages()
    cutoff = {kind: now - age for kind, age in ages.items()}
    dispatched = FlowRunOutbox.state == "dispatched"
    by_age = [
        ("predictions", Prediction, Prediction.timestamp < cutoff["predictions"]),
        ("feedback", Feedback, Feedback.timestamp < cutoff["feedback"]),
        ("pipeline_runs", PipelineRun, PipelineRun.started_at < cutoff["pipeline_runs"]),
        ("feature_lookups", FeatureLookup, FeatureLookup.timestamp < cutoff["feature_lookups"]),
        ("aggregates", ModelTally, ModelTally.bucket_start < cutoff["aggregates"]),
        ("samples", PredictionSample, PredictionSample.bucket_start < cutoff["samples"]),
        ("evaluation_results", EvaluationResult, EvaluationResult.window_end < cutoff["evaluation_results"]),
        ("model_reports", ModelReport, ModelReport.period_end < cutoff["reports"]),
        ("report_deliveries", ReportDelivery, ReportDelivery.period_end < cutoff["reports"]),
    ]
    removed = {kind: purge_old(store, entity, old, retention.batch_size) for kind, entity, old in by_age}
    kept_until = now - key_lifetime(config)
    removed["prediction_keys"] = purge_by_key(
        store, PredictionKey, PredictionKey.received_at < kept_until, retention.batch_size
    )
    removed["waiting_labels"] = purge_by_key(
        store, WaitingLabel, WaitingLabel.received_at < kept_until, retention.batch_size
    )
    removed["incidents"] = purge_incidents(store, cutoff["incidents"], retention.batch_size)
    referenced_last = [
        ("outbox", FlowRunOutbox, and_(dispatched, FlowRunOutbox.created_at < cutoff["outbox"])),
        ("alerts", Alert, _unreferenced_alert(cutoff["alerts"])),
        ("notifications", AlertNotification, _unreferenced_notification(cutoff["alerts"])),
    ]
    for kind, entity, old in referenced_last:
        removed[kind] = purge_rows(store, entity, old, retention.batch_size)
    removed["report_files"] = purge_files(home, cutoff["reports"])
    return removed


def retention_markdown(removed: dict[str, int], config: WatchkeeperConfig) -> str:
    retention = config.retention
    ages = {
        **retention.ages(),
        "prediction_keys": f"{key_lifetime(config)} (dedupe window, label horizons)",
        "waiting_labels": f"{key_lifetime(config)} (dedupe window, label horizons)",
        "notifications": retention.alerts,
        "report_files": retention.reports,
        "model_reports": retention.reports,
        "report_deliveries": retention.reports,
    }
    rows = [[kind, ages[kind], f"{count:,}"] for kind, count in removed.items()]
    return "# Retention\n\n" + table(["kind", "kept for", "removed"], rows)
