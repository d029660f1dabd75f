"""The store's tables. Alembic migrations under `migrations/` create them; this module is their shape.

Timestamps are stored as naive UTC (`UTCDateTime`) so SQLite and PostgreSQL behave alike, and are
returned timezone-aware.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from watchkeeper.times import as_utc, utcnow

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return as_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class EpochSeconds(TypeDecorator[datetime]):
    """A UTC time to the second as an integer: 4 to 8 bytes on SQLite where text takes 26, for the
    tables that hold a row per prediction."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> int | None:
        return None if value is None else int(as_utc(value).timestamp())

    def process_result_value(self, value: int | None, dialect: Any) -> datetime | None:
        return None if value is None else datetime.fromtimestamp(value, UTC)


class KeyBytes(TypeDecorator[bytes]):
    """A short binary key, bound and read as `bytes` without SQLAlchemy's per-value conversion
    (both drivers take and return `bytes` themselves): it is bound thousands of times a second."""

    impl = LargeBinary
    cache_ok = True

    def bind_processor(self, dialect: Any) -> None:
        return None

    def result_processor(self, dialect: Any, _coltype: Any) -> None:
        return None


class Base(DeclarativeBase):
    pass


class AlertStatus(StrEnum):
    """An alert fires until Alertmanager says it resolved (`store/alerts.py` records that)."""

    FIRING = "firing"
    RESOLVED = "resolved"


class IncidentStatus(StrEnum):
    """An incident opens with its first alert, resolves when none of its alerts fires, and reopens
    when a related alert fires within the quiet period (`tasks/incidents.py`)."""

    OPEN = "open"
    RESOLVED = "resolved"


class OutboxState(StrEnum):
    """A run the intake owes: pending, dispatching under a lease, dispatched (`store/outbox.py`)."""

    PENDING = "pending"
    DISPATCHING = "dispatching"
    DISPATCHED = "dispatched"


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("model_name", "request_id", name="uq_predictions_model_request"),
        Index("ix_predictions_model_time", "model_name", "model_version", "timestamp"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(256))
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime())
    features: Mapped[dict[str, Any]] = mapped_column(JSON)
    prediction: Mapped[Any] = mapped_column(JSON)
    score: Mapped[float | None] = mapped_column(Float)
    latency_seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Feedback(Base):
    """A delayed ground-truth label for one prediction, joined to it by (model_name, request_id)."""

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("model_name", "request_id", name="uq_feedback_model_request"),
        Index("ix_feedback_model_time", "model_name", "timestamp"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[str] = mapped_column(String(256))
    label: Mapped[Any] = mapped_column(JSON)
    business_value: Mapped[float | None] = mapped_column(Float)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Tally(Base):
    """Counts from the intake, appended one row per batch and series and summed on every scrape.

    Inserting instead of adding to a shared counter row means concurrent intake writers never wait
    on one another; collect-model-metrics folds the rows of each series into one (`fold_tallies`).
    `family` is what is counted, `subject` the model or dataset, `variant` the model version or
    check, `detail` the column, prediction class or business metric. The intake's record counts
    (`count:<kind>`) and histograms (`bucket:<histogram>` by upper bound, `sum:<histogram>` with
    `count` and `sum`) are tallies too, so no two writers ever update the same row.
    """

    __tablename__ = "tallies"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    family: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(128))
    variant: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(String(128))
    total: Mapped[float] = mapped_column(Float)


class _BucketSeries:
    """A model version's series in one time bucket (`watchkeeper.intake.aggregates`): a measure and
    its detail (a class, a latency index, a score bin, a segment value...)."""

    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    bucket_start: Mapped[datetime] = mapped_column(EpochSeconds())
    measure: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(String(300))
    total: Mapped[float] = mapped_column(Float)


class ModelTally(_BucketSeries, Base):
    """One row per series and bucket: the appended rows folded (`store/buckets.py`). A window is
    the sum of its buckets' rows here and in `model_tally_appends`.

    Keyed by model, bucket and series: a window's read is one range of the key, and
    without a rowid SQLite keeps each series once (with an id, a window index and a unique index,
    it kept it three times)."""

    __tablename__ = "model_tallies"
    __table_args__ = (
        PrimaryKeyConstraint("model_name", "bucket_start", "model_version", "measure", "detail"),
        {"sqlite_with_rowid": False},
    )


class ModelTallyAppend(_BucketSeries, Base):
    """What the intake adds, one row per batch and series, so that no two writers share a row. No
    index to keep up: rows go in at the end and the collection's fold takes them out by id."""

    __tablename__ = "model_tally_appends"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)


class PredictionKey(Base):
    """A prediction's key, kept `intake.dedupe_window` so a re-sent batch counts once, and what its
    label's join needs until the label arrives (its claim clears those facts) or
    `windows.label_horizon` passes. The key is mostly a
    hash of the model and request id (`aggregates.request_key`): 16 bytes for an ASCII id, where the
    two were about 40, in the row and again in the index by arrival."""

    __tablename__ = "prediction_keys"
    # Without a rowid, SQLite keeps each row in its primary key's b-tree: the key once.
    # PostgreSQL: room left in each page, so that a label's `labelled = true` is a heap-only update
    # (no new index entries for most of the keys).
    __table_args__ = (
        Index("ix_prediction_keys_received", "received_at"),
        {"sqlite_with_rowid": False, "postgresql_with": {"fillfactor": 85}},
    )

    key: Mapped[bytes] = mapped_column(KeyBytes(28), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64))
    bucket_start: Mapped[datetime] = mapped_column(EpochSeconds())
    predicted: Mapped[str | None] = mapped_column(String(64), doc="class; null when it failed")
    score_bin: Mapped[str | None] = mapped_column(String(32))
    segments: Mapped[str | None] = mapped_column(String(400), doc="column, value pairs (aggregates.py)")
    ranked: Mapped[str | None] = mapped_column(Text, doc="a ranking model's ranked items' keys (kinds.py)")
    probabilities: Mapped[str | None] = mapped_column(
        Text, doc="a scored multiclass prediction's calibrated probabilities (class_estimation.py)"
    )
    labelled: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime] = mapped_column(EpochSeconds(), default=utcnow)


class PredictionSample(Base):
    """A prediction in its bucket's drift sample: the bucket's `intake.sample_per_bucket` smallest
    request-id priorities (see `watchkeeper.intake.aggregates.BottomK` and `store/samples.py`)."""

    __tablename__ = "prediction_samples"
    # Keyed by model, bucket and priority (a hash of the request id, so one a prediction): a
    # bucket's rows lie together in priority order, and the trim's delete of those above the k-th
    # frees whole pages that later rows reuse (with a rowid, rows lay in arrival order, and the trim
    # left every page of a bucket two-thirds empty for good).
    __table_args__ = (
        PrimaryKeyConstraint("model_name", "bucket_start", "priority"),
        {"sqlite_with_rowid": False},
    )

    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(256))
    bucket_start: Mapped[datetime] = mapped_column(EpochSeconds())
    priority: Mapped[int] = mapped_column(BigInteger)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime())
    features: Mapped[dict[str, Any]] = mapped_column(JSON)
    prediction: Mapped[Any] = mapped_column(JSON)
    score: Mapped[float | None] = mapped_column(Float)
    error: Mapped[bool] = mapped_column(Boolean, default=False)
    # What an incident shows of its model's slowest and failing requests, with their traces.
    latency_seconds: Mapped[float | None] = mapped_column(Float)
    trace_id: Mapped[str | None] = mapped_column(String(32))


class WaitingLabel(Base):
    """A label whose prediction is not (yet) among the keys: joined when the prediction arrives,
    dropped after the label horizon."""

    __tablename__ = "waiting_labels"
    # By key: a prediction's intake takes the labels waiting for a batch of any models in one
    # statement (by model and request id it took one a model).
    __table_args__ = (
        Index("ix_waiting_labels_received", "received_at"),
        Index("ix_waiting_labels_key", "key"),
    )

    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    key: Mapped[bytes] = mapped_column(KeyBytes(28), doc="its prediction's key (PredictionKey.key)")
    label: Mapped[Any] = mapped_column(JSON)
    business_value: Mapped[float | None] = mapped_column(Float)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PipelineRun(Base):
    """One stage of one pipeline run, as the pipeline reported it."""

    __tablename__ = "pipeline_runs"
    __table_args__ = (
        UniqueConstraint("pipeline_name", "run_id", "stage", name="uq_pipeline_run_stage"),
        Index("ix_pipeline_runs_time", "pipeline_name", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    pipeline_name: Mapped[str] = mapped_column(String(128))
    run_id: Mapped[str] = mapped_column(String(256))
    stage: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    duration_seconds: Mapped[float] = mapped_column(Float)
    records: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    source: Mapped[str] = mapped_column(String(16), default="intake", doc="intake or prefect")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FeatureLookup(Base):
    """One lookup of one feature view, as the serving path reported it: its latency, its keys
    and how many failed, and the newest materialisation among the values it served."""

    __tablename__ = "feature_lookups"
    __table_args__ = (
        UniqueConstraint("feature_store", "feature_view", "request_id", name="uq_feature_lookup"),
        Index("ix_feature_lookups_time", "feature_store", "feature_view", "timestamp"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    feature_store: Mapped[str] = mapped_column(String(128))
    feature_view: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[str] = mapped_column(String(256))
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime())
    latency_seconds: Mapped[float] = mapped_column(Float)
    keys: Mapped[int] = mapped_column(BigInteger, default=1)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    materialized_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class EvaluationResult(Base):
    """One number computed by a monitoring flow for one window.

    `labels_key` is the canonical `k=v,...` form of `labels`, so a re-evaluated window (a backfill)
    replaces its earlier result instead of adding a second one.
    """

    __tablename__ = "evaluation_results"
    __table_args__ = (
        UniqueConstraint(
            "kind",
            "subject",
            "model_version",
            "window_start",
            "window_end",
            "metric",
            "labels_key",
            name="uq_evaluation_window_metric",
        ),
        Index("ix_evaluation_latest", "kind", "subject", "metric", "window_end"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(128), doc="model, dataset or pipeline name")
    model_version: Mapped[str] = mapped_column(String(64), default="", doc="'' for subjects without versions")
    window_start: Mapped[datetime] = mapped_column(UTCDateTime())
    window_end: Mapped[datetime] = mapped_column(UTCDateTime())
    metric: Mapped[str] = mapped_column(String(128))
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    labels_key: Mapped[str] = mapped_column(String(512), default="")
    value: Mapped[float] = mapped_column(Float)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))


class LatestWindow(Base):
    """The most recent window's results of each (kind, subject, model_version): what `/metrics`
    exports, read without scanning the history. Written with its window's results, replaced only by
    a window that ends no earlier (a backfill of old windows leaves it alone)."""

    __tablename__ = "latest_windows"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    subject: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime())
    window_end: Mapped[datetime] = mapped_column(UTCDateTime())
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON, doc="[{metric, labels, value}]")


class AlertNotification(Base):
    """One Alertmanager webhook delivery, stored before the intake answers.

    `digest` identifies the notification's content, so an at-least-once re-delivery is recognised.
    """

    __tablename__ = "alert_notifications"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    receiver: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    group_key: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Malformed alerts the notification carried, kept aside: [{index, field, reason, alert}].
    rejected: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    brought_news: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Alert(Base):
    """An alert instance, keyed as Alertmanager identifies it: fingerprint and startsAt."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("fingerprint", "starts_at", name="uq_alerts_fingerprint_start"),
        Index("ix_alerts_status_start", "status", "starts_at"),
        Index("ix_alerts_service_start", "service", "starts_at"),
        Index("ix_alerts_model_start", "model_name", "starts_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))
    alertname: Mapped[str] = mapped_column(String(256))
    severity: Mapped[str | None] = mapped_column(String(32))
    service: Mapped[str | None] = mapped_column(String(128))
    model_name: Mapped[str | None] = mapped_column(String(128))
    pipeline_name: Mapped[str | None] = mapped_column(String(128))
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    annotations: Mapped[dict[str, str]] = mapped_column(JSON)
    generator_url: Mapped[str | None] = mapped_column(Text)
    first_notification_id: Mapped[int] = mapped_column(ForeignKey("alert_notifications.id"))
    correlated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class FlowRunOutbox(Base):
    """A Prefect run the intake owes: written with the notification, dispatched when Prefect answers."""

    __tablename__ = "flow_run_outbox"
    __table_args__ = (Index("ix_outbox_pending", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    deployment: Mapped[str] = mapped_column(String(256))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    notification_id: Mapped[int | None] = mapped_column(ForeignKey("alert_notifications.id"))
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The notification's trace, which the run continues (W3C traceparent: 55 characters).
    traceparent: Mapped[str | None] = mapped_column(String(55))


class Incident(Base):
    __tablename__ = "incidents"
    __table_args__ = (Index("ix_incidents_status_last", "status", "last_alert_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16), default=IncidentStatus.OPEN)
    title: Mapped[str] = mapped_column(Text)
    severity: Mapped[str | None] = mapped_column(String(32))
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_alert_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    root_cause_alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id"))
    root_cause_service: Mapped[str | None] = mapped_column(String(128))
    root_cause_confidence: Mapped[float | None] = mapped_column(Float)
    ranking: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    ticket_id: Mapped[str | None] = mapped_column(String(128))
    # The trace of the notification whose run opened the incident (32 hex digits).
    trace_id: Mapped[str | None] = mapped_column(String(32))
    revision: Mapped[int] = mapped_column(
        Integer,
        default=0,
        server_default="0",
        doc="bumped by every correlation change: opened, grown, resolved",
    )
    handled_revision: Mapped[int] = mapped_column(
        Integer,
        default=0,
        server_default="0",
        doc="the revision whose remediation decisions (or reverts) are recorded; behind it, owed",
    )
    # What the people on call did (`store/lifecycle.py`).
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    assignee: Mapped[str | None] = mapped_column(String(128))
    snoozed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), doc="claimed by its escalation")
    muted_by: Mapped[str | None] = mapped_column(String(128), doc="who muted it until it resolves")
    silences: Mapped[dict[str, str] | None] = mapped_column(
        JSON, doc="alert fingerprint -> the Alertmanager silence muting it, until expired"
    )
    mute_lease_until: Mapped[datetime | None] = mapped_column(
        UTCDateTime(), doc="held by the reconciler silencing the alerts that joined it muted"
    )
    resolved_by: Mapped[str | None] = mapped_column(String(128), doc="a person, when resolved by hand")
    follows_incident_id: Mapped[int | None] = mapped_column(
        ForeignKey("incidents.id"), doc="the incident resolved by hand whose alert fired again"
    )


class IncidentMember(Base):
    """Why an alert belongs to an incident, and how sure the correlation is."""

    __tablename__ = "incident_members"

    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), primary_key=True, unique=True)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    confidence: Mapped[float] = mapped_column(Float)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IncidentEvent(Base):
    """The incident's timeline: opened, alert joined, root cause changed, action taken, resolved."""

    __tablename__ = "incident_events"
    __table_args__ = (Index("ix_incident_events_incident", "incident_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ControlFlag(Base):
    """Operator switches that must survive restarts, such as the remediation kill switch."""

    __tablename__ = "control_flags"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    changed_by: Mapped[str | None] = mapped_column(String(128))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Executor(Base):
    """A live warm executor: it proves it is alive by its heartbeat; its claims lapse without one."""

    __tablename__ = "executors"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ExecutorClaim(Base):
    """A Prefect flow run an executor took: written before it proposes `Pending`, removed when the
    run ends. A run in `Pending` or `Running` with no claim of a live executor was stranded."""

    __tablename__ = "executor_claims"
    __table_args__ = (Index("ix_executor_claims_executor", "executor_id"),)

    flow_run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    executor_id: Mapped[str] = mapped_column(String(64))
    deployment: Mapped[str] = mapped_column(String(256))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelReport(Base):
    """One model's report for one period: its figures (`summary`), markdown and HTML (gzipped, with
    plotly.js inlined). A re-run for the same period replaces the content and keeps the id."""

    __tablename__ = "model_reports"
    __table_args__ = (
        UniqueConstraint("model_name", "period_start", "period_end", name="uq_model_reports_period"),
        Index("ix_model_reports_created", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(128))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    markdown: Mapped[str] = mapped_column(Text)
    html_gzip: Mapped[bytes] = mapped_column(LargeBinary)


class ReportDelivery(Base):
    """A report sent to one notification target: claimed before the send, so a re-run or a second
    run of the same period never sends it twice (see `watchkeeper.store.reports`)."""

    __tablename__ = "report_deliveries"
    __table_args__ = (
        UniqueConstraint("model_name", "period_start", "period_end", "target", name="uq_report_delivery"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(128))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    target: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    claimed_by: Mapped[str] = mapped_column(String(128))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    detail: Mapped[str | None] = mapped_column(Text)
