"""Model metrics over a window: traffic, errors, latency and quality from the sums of the window's
buckets (`tasks/window_totals.py`), and how results are saved. `read_window` reads the raw rows
kept (`intake.raw_predictions`) for reports."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import String, and_, case, cast, delete, func, select
from sqlalchemy.orm import Session

from tasks.kind_quality import recommendation_mix
from tasks.measurements import Measurement, Window
from tasks.references import ModelReference, model_reference
from tasks.window_totals import (
    VersionTotals,
    business_metrics,
    estimate_unlabelled,
    estimated_classes,
    estimated_loss,
    positive_rates,
    quality_metrics,
    regression_drift,
    segment_metrics,
    traffic_metrics,
)
from watchkeeper.config import Model, WatchkeeperConfig
from watchkeeper.intake.aggregates import RECOMMENDED, bucket_start
from watchkeeper.intake.checks import class_name
from watchkeeper.intake.kinds import BINARY, MULTICLASS, RANKING, REGRESSION
from watchkeeper.store import Store, insert_for
from watchkeeper.store.buckets import first_bucket, fold_model_tallies, window_totals
from watchkeeper.store.intake import IntakeRules, fold_tallies, join_waiting_labels
from watchkeeper.store.samples import Sampling, trim_samples
from watchkeeper.store.schema import EvaluationResult, Feedback, LatestWindow, Prediction
from watchkeeper.times import utcnow

# Buckets whose samples each collection trims (an older one is trimmed by nobody, read right anyway).
RECENT_SAMPLES = timedelta(minutes=10)

LOG_COLUMNS = [
    "request_id",
    "model_version",
    "timestamp",
    "prediction",
    "score",
    "latency_seconds",
    "error",
    "label",
    "business_value",
]


def json_class_names(texts: pd.Series) -> pd.Series:
    """JSON texts as class names, each distinct text decoded once: a window's predictions, labels
    and segment values take a handful of values, and decoding every row's JSON cost most of a
    collection's CPU. JSON null and SQL NULL are None."""
    names = {}
    for text in texts.dropna().unique():
        value = json.loads(text)
        names[text] = None if value is None else class_name(value)
    return texts.map(names).astype(object).where(texts.notna(), None)


def read_window(
    store: Store,
    model_name: str,
    window: Window,
    feature_columns: Sequence[str] = (),
    at_most: int | None = None,
) -> pd.DataFrame:
    """Predictions in [start, end) with their labels when they have arrived, and the values of
    `feature_columns` (segment columns) in columns of their names. Prediction, label and those
    features come as class names (`class_name`; None when absent). With `at_most`, a window holding
    more rows is read as a systematic sample (every k-th stored row, as `prediction_frame` does)."""
    features = [
        cast(Prediction.features[name], String).label(f"feature_{i}")
        for i, name in enumerate(feature_columns)
    ]
    query = (
        select(
            Prediction.request_id,
            Prediction.model_version,
            Prediction.timestamp,
            cast(Prediction.prediction, String),
            Prediction.score,
            Prediction.latency_seconds,
            Prediction.error,
            cast(Feedback.label, String),
            Feedback.business_value,
            *features,
        )
        .outerjoin(
            Feedback,
            and_(Feedback.model_name == Prediction.model_name, Feedback.request_id == Prediction.request_id),
        )
        .where(
            Prediction.model_name == model_name,
            Prediction.timestamp >= window.start,
            Prediction.timestamp < window.end,
        )
    )
    with store.reading() as session:
        if at_most is not None:
            stored = count_predictions(session, model_name, window)[0]
            if stored > at_most:
                query = query.where(Prediction.id % math.ceil(stored / at_most) == 0)
        rows = session.execute(query).all()
    frame = pd.DataFrame(rows, columns=[*LOG_COLUMNS, *feature_columns])
    for column in ["prediction", "label", *feature_columns]:
        frame[column] = json_class_names(frame[column])
    frame["error"] = frame["error"].astype(bool)
    numbers = ["score", "latency_seconds", "business_value"]
    frame[numbers] = frame[numbers].astype(float)
    return frame


def count_predictions(session: Session, model_name: str, window: Window) -> tuple[int, int]:
    """Predictions and failed predictions stored in [start, end), counted by the database."""
    stored, failed = session.execute(
        select(func.count(), func.coalesce(func.sum(case((Prediction.error, 1), else_=0)), 0)).where(
            Prediction.model_name == model_name,
            Prediction.timestamp >= window.start,
            Prediction.timestamp < window.end,
        )
    ).one()
    return int(stored), int(failed)


def save_results(
    store: Store,
    kind: str,
    subject: str,
    version: str,
    window: Window,
    measurements: list[Measurement],
    flow_run_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> int:
    """Replace this window's results for `kind` and `subject`: a re-run never duplicates them."""
    with store.writing() as session:
        return replace_window(session, kind, subject, version, window, measurements, flow_run_id, details)


def replace_window(
    session: Session,
    kind: str,
    subject: str,
    version: str,
    window: Window,
    measurements: list[Measurement],
    flow_run_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> int:
    """`save_results` within the caller's transaction."""
    computed = utcnow()
    session.execute(
        delete(EvaluationResult).where(
            EvaluationResult.kind == kind,
            EvaluationResult.subject == subject,
            EvaluationResult.model_version == version,
            EvaluationResult.window_start == window.start,
            EvaluationResult.window_end == window.end,
        )
    )
    if measurements:  # one multi-row INSERT: a model's window saves a hundred results every 15 s
        session.execute(
            EvaluationResult.__table__.insert(),
            [
                {
                    "kind": kind,
                    "subject": subject,
                    "model_version": version,
                    "window_start": window.start,
                    "window_end": window.end,
                    "metric": m.metric,
                    "labels": m.labels,
                    "labels_key": m.labels_key,
                    "value": m.value,
                    "details": {**(details or {}), **(m.details or {})} or None,
                    "computed_at": computed,
                    "flow_run_id": flow_run_id,
                }
                for m in measurements
            ],
        )
    return advance_latest(session, kind, subject, version, window, measurements, computed)


def advance_latest(
    session: Session,
    kind: str,
    subject: str,
    version: str,
    window: Window,
    measurements: list[Measurement],
    computed: datetime,
) -> int:
    """Make this window the series' latest unless a later one is already there: one compare-and-set
    statement (INSERT ... ON CONFLICT DO UPDATE ... WHERE), so concurrent writers cannot regress it.
    Returns how many results the window holds."""
    row = {
        "kind": kind,
        "subject": subject,
        "model_version": version,
        "window_start": window.start,
        "window_end": window.end,
        "computed_at": computed,
        "results": [{"metric": m.metric, "labels": m.labels, "value": m.value} for m in measurements],
    }
    statement = insert_for(session)(LatestWindow).values(row)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["kind", "subject", "model_version"],
            set_={
                name: statement.excluded[name]
                for name in ("window_start", "window_end", "computed_at", "results")
            },
            where=LatestWindow.window_end <= statement.excluded.window_end,
        )
    )
    return len(measurements)


def bucket_window(end: datetime, length: timedelta, bucket_seconds: int) -> Window:
    """The window of `length` before `end`, its start moved back to a bucket's start: a window is a
    sum of whole buckets, and its rates divide by the time those buckets cover."""
    return Window(bucket_start(end - length, bucket_seconds), end)


def _by_version(
    store: Store, model: Model, window: Window, appended: bool
) -> tuple[dict[str, VersionTotals], dict[str, Window]]:
    """Each version's totals over the window (the configured version's, empty, when none served),
    and the part of the window since each version's first bucket: rates of a model (or version)
    that started inside the window are not diluted by the time before it served. `appended`:
    whether to read the rows appended since the last fold (see `store/buckets.py`)."""
    with store.reading() as session:
        totals = window_totals(session, model.name, window.start, window.end, appended)
        firsts = {version: first_bucket(session, model.name, version, appended) for version in totals}
    by_version = {version: VersionTotals(t) for version, t in sorted(totals.items())} or {
        model.version: VersionTotals()
    }
    served = {
        version: Window(max(window.start, firsts[version]), window.end)
        if firsts.get(version) is not None and firsts[version] < window.end
        else window
        for version in by_version
    }
    return by_version, served


def measure_traffic(
    store: Store, model: Model, window: Window, appended: bool = True
) -> dict[str, list[Measurement]]:
    """Per model version: request count, throughput, errors, latency and prediction mix."""
    by_version, served = _by_version(store, model, window, appended)
    return {version: traffic_metrics(totals, served[version]) for version, totals in by_version.items()}


def measure_quality(
    store: Store,
    model: Model,
    window: Window,
    reference: ModelReference | None = None,
    appended: bool = True,
) -> dict[str, dict[str, list[Measurement]]]:
    """Per kind and model version: label coverage, quality once coverage allows, business impact,
    quality estimated for the predictions still without a label (with a calibrated reference), and
    the model's segments."""
    by_version, served = _by_version(store, model, window, appended)
    calibration = reference.calibration if reference else None
    coverage = model.thresholds.min_label_coverage
    measured: dict[str, dict[str, list[Measurement]]] = {"model_quality": {}}
    if model.segments:
        measured["model_segments"] = {}
    for version, totals in by_version.items():
        measured["model_quality"][version] = [
            *quality_metrics(totals, model, coverage),
            *(
                recommendation_mix(
                    totals.measure(RECOMMENDED),
                    reference.item_counts if reference else Counter(),
                    model.ranking.catalogue_size,
                )
                if model.task == RANKING
                else []
            ),
            *business_metrics(totals, model, coverage),
            *(
                estimate_unlabelled(totals, calibration, model.positive_class, model.windows.min_rows)
                if calibration and model.task == BINARY
                else []
            ),
            *(estimated_loss(totals, model.windows.min_rows) if model.task == REGRESSION else []),
            *(regression_drift(totals, reference) if model.task == REGRESSION and reference else []),
            *(estimated_classes(totals, model.windows.min_rows) if model.task == MULTICLASS else []),
        ]
        if model.segments:
            measured["model_segments"][version] = positive_rates(
                totals, model, reference.positive_rate if reference else None
            ) + [
                m
                for segment in model.segments
                for m in segment_metrics(
                    totals,
                    segment,
                    reference.segment_values.get(segment.column) if reference else None,
                    model,
                    served[version].seconds,
                    reference.segment_positive_rates if reference else {},
                )
            ]
    return measured


def record_results(
    store: Store,
    model: Model,
    windows: dict[Window, dict[str, dict[str, list[Measurement]]]],
    flow_run_id: str | None,
    history_every: timedelta | None = None,
) -> int:
    """Save each window's results of each kind and model version, in one transaction; returns how
    many were saved. With `history_every`, the windows become the latest (what `/metrics` exports)
    and join the history only when its last entry is older than the current slot of that length."""
    with store.writing() as session:
        end = max(window.end for window in windows)
        history = not history_every or _history_due(session, model.name, end, history_every)
        return sum(
            replace_window(session, kind, model.name, version, window, measurements, flow_run_id)
            if history
            else advance_latest(session, kind, model.name, version, window, measurements, utcnow())
            for window, by_kind in windows.items()
            for kind, by_version in by_kind.items()
            for version, measurements in by_version.items()
        )


def _history_due(session: Session, model_name: str, end: datetime, every: timedelta) -> bool:
    """Whether the model's history has no window ending in the slot of length `every` that holds
    `end`: one seek on the (kind, subject, metric, window_end) index."""
    slot = bucket_start(end, int(every.total_seconds()))
    last = session.scalar(
        select(func.max(EvaluationResult.window_end)).where(
            EvaluationResult.kind == "model_traffic",
            EvaluationResult.subject == model_name,
            EvaluationResult.metric == "request_count",
        )
    )
    return last is None or last < slot


def collect_model(
    store: Store,
    model: Model,
    traffic_window: Window,
    quality_window: Window,
    reference: ModelReference | None,
    flow_run_id: str | None,
    history_every: timedelta | None = None,
) -> int:
    """One model's traffic and quality from its windows' buckets, saved together; returns how many
    results. Its cost is the model's, not its traffic's. The flow has just folded the intake's
    appended rows: reading them again per model would scan them per model."""
    traffic = measure_traffic(store, model, traffic_window, appended=False)
    quality = measure_quality(store, model, quality_window, reference, appended=False)
    return record_results(
        store,
        model,
        {traffic_window: {"model_traffic": traffic}, quality_window: quality},
        flow_run_id,
        history_every,
    )


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def collect_models(
    store: Store, config: WatchkeeperConfig, models: Sequence[Model], end: datetime, flow_run_id: str | None
) -> dict[str, int]:
    """Each model's windows ending at `end`, each model in its own transaction; returns the results
    saved per model. One task for the fleet: a task run per model cost the Prefect server more than
    the model's own work (fifty models: 200 task runs a minute). A model that fails does not stop
    the others; the task fails once all were tried, and its retry redoes them (a window's results
    are replaced, never added)."""
    logger = get_run_logger()
    bucket = int(config.intake.bucket.total_seconds())
    stored: dict[str, int] = {}
    failed: list[str] = []
    for model in models:
        try:
            stored[model.name] = collect_model(
                store,
                model,
                bucket_window(end, model.windows.metrics, bucket),
                bucket_window(end, model.windows.quality, bucket),
                model_reference(store, config, model),
                flow_run_id,
                config.retention.results_every,
            )
        except Exception:  # one model's failure is logged and retried; the others are collected
            logger.exception("%s: collection failed", model.name)
            failed.append(model.name)
            continue
        logger.info("%s: %d results for the window ending %s", model.name, stored[model.name], end)
    if failed:
        raise RuntimeError(f"collection failed for {', '.join(failed)}")
    return stored


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def compact_tallies(store: Store, sampling: Sampling) -> int:
    """Fold the intake's appended tally rows into one row per series, so scrapes and windows stay
    cheap, and trim the recent buckets' samples to their bottom k."""
    since = utcnow() - RECENT_SAMPLES
    return fold_tallies(store) + fold_model_tallies(store) + trim_samples(store, sampling.k, since)


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def join_labels(store: Store, rules: IntakeRules) -> int:
    """Count the labels that arrived before their predictions, now that the predictions are here."""
    return join_waiting_labels(store, rules)
