"""Model metrics over a window of the prediction log: traffic, errors, latency and quality.

The functions taking a DataFrame are plain logic; the tasks at the bottom wrap store I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import String, and_, case, cast, delete, func, select
from sqlalchemy.orm import Session

from tasks.estimation import estimate_unlabelled
from tasks.logs import first_prediction_time
from tasks.measurements import Measurement, Window, confusion, is_positive, labelled_rows, scores
from tasks.references import ModelReference
from tasks.segments import segment_metrics
from watchkeeper.config import Model
from watchkeeper.intake.checks import class_name
from watchkeeper.store import Store, insert_for
from watchkeeper.store.intake import fold_tallies
from watchkeeper.store.schema import EvaluationResult, Feedback, LatestWindow, Prediction
from watchkeeper.times import utcnow


def traffic_metrics(log: pd.DataFrame, window: Window) -> list[Measurement]:
    """Request count, throughput, error rate and the prediction mix of one window."""
    count = len(log)
    measurements = [
        Measurement("request_count", float(count)),
        Measurement("throughput_rps", count / window.seconds),
        Measurement("error_rate", float(log["error"].mean()) if count else 0.0),
    ]
    if "latency_seconds" in log and log["latency_seconds"].notna().any():
        latency = log["latency_seconds"].dropna()
        measurements += [
            Measurement("latency_p50_seconds", float(latency.quantile(0.5))),
            Measurement("latency_p95_seconds", float(latency.quantile(0.95))),
        ]
    served = log.loc[~log["error"], "prediction"].dropna()
    for predicted_class, n in served.map(class_name).value_counts().items():
        measurements.append(
            Measurement("prediction_share", n / len(served), {"prediction_class": str(predicted_class)})
        )
    return measurements


def label_coverage(log: pd.DataFrame) -> float:
    served = log.loc[~log["error"]]
    return float(served["label"].notna().mean()) if len(served) else 0.0


def quality_metrics(log: pd.DataFrame, positive_class: object, min_coverage: float) -> list[Measurement]:
    """Confusion counts and scores from served predictions that have a label.

    Below `min_coverage` only the coverage is reported: quality measured on the few labels that
    arrived first would be biased toward whatever gets labelled fastest.
    """
    coverage = label_coverage(log)
    measurements = [Measurement("label_coverage_ratio", coverage)]
    labelled = labelled_rows(log)
    if coverage < min_coverage or labelled.empty:
        return measurements
    tp, fp, tn, fn = confusion(labelled, positive_class)
    measurements += [
        Measurement("true_positives", float(tp)),
        Measurement("false_positives", float(fp)),
        Measurement("true_negatives", float(tn)),
        Measurement("false_negatives", float(fn)),
        *(Measurement(name, value) for name, value in scores(tp, fp, tn, fn).items()),
        Measurement("false_positive_rate", float(fp / (fp + tn)) if fp + tn else 0.0),
    ]
    return measurements


def business_metrics(
    log: pd.DataFrame, positive_class: object, metric_type: str, min_coverage: float = 0.0
) -> list[Measurement]:
    """The business value of correct positive decisions among labelled predictions (e.g. fraud caught).

    Not published below `min_coverage`, as quality is not: a window whose labels have not arrived
    yet (a fresh model, labels a day late) would read as no value at all and page
    BusinessImpactCritical.
    """
    if log.empty or label_coverage(log) < min_coverage:
        return []
    labelled = labelled_rows(log)
    caught = is_positive(labelled["prediction"], positive_class) & is_positive(
        labelled["label"], positive_class
    )
    value = float(labelled.loc[caught, "business_value"].fillna(0).sum())
    return [Measurement("business_impact", value, {"metric_type": metric_type})]


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
    computed = utcnow()
    with store.writing() as session:
        session.execute(
            delete(EvaluationResult).where(
                EvaluationResult.kind == kind,
                EvaluationResult.subject == subject,
                EvaluationResult.model_version == version,
                EvaluationResult.window_start == window.start,
                EvaluationResult.window_end == window.end,
            )
        )
        session.add_all(
            EvaluationResult(
                kind=kind,
                subject=subject,
                model_version=version,
                window_start=window.start,
                window_end=window.end,
                metric=m.metric,
                labels=m.labels,
                labels_key=m.labels_key,
                value=m.value,
                details={**(details or {}), **(m.details or {})} or None,
                computed_at=computed,
                flow_run_id=flow_run_id,
            )
            for m in measurements
        )
        advance_latest(session, kind, subject, version, window, measurements, computed)
    return len(measurements)


def advance_latest(
    session: Session,
    kind: str,
    subject: str,
    version: str,
    window: Window,
    measurements: list[Measurement],
    computed: datetime,
) -> None:
    """Make this window the series' latest unless a later one is already there: one compare-and-set
    statement (INSERT ... ON CONFLICT DO UPDATE ... WHERE), so concurrent writers cannot regress it."""
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


def _per_version(log: pd.DataFrame, default_version: str) -> dict[str, pd.DataFrame]:
    versions = sorted(set(log["model_version"])) or [default_version]
    return {version: log[log["model_version"] == version] for version in versions}


def positive_rates(log: pd.DataFrame, model: Model, reference: ModelReference | None) -> list[Measurement]:
    """The model's share of positive predictions and the reference's: the segments' rules compare a
    segment's shift with the whole model's, so a whole-model shift is not paged once per segment."""
    served = log.loc[~log["error"], "prediction"]
    found = []
    if len(served):
        found.append(Measurement("positive_rate", float(is_positive(served, model.positive_class).mean())))
    if reference is not None and reference.positive_rate is not None:
        found.append(Measurement("reference_positive_rate", reference.positive_rate))
    return found


def served_window(store: Store, model_name: str, version: str, window: Window) -> Window:
    """The part of `window` since the version's first prediction: rates of a model (or version)
    that started inside the window are not diluted by the time before it served."""
    since = first_prediction_time(store, model_name, version)
    return Window(max(window.start, since), window.end) if since and since < window.end else window


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def measure_traffic(store: Store, model: Model, window: Window) -> dict[str, list[Measurement]]:
    """Per model version: request count, throughput, errors, latency and prediction mix.

    A version first served inside the window has its throughput counted from its first prediction,
    so a model that just started (or a new version) does not read as low traffic.
    """
    log = read_window(store, model.name, window)
    return {
        version: traffic_metrics(part, served_window(store, model.name, version, window))
        for version, part in _per_version(log, model.version).items()
    }


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def measure_quality(
    store: Store, model: Model, window: Window, reference: ModelReference | None = None
) -> dict[str, dict[str, list[Measurement]]]:
    """Per kind and model version: label coverage, quality once coverage allows, business impact,
    quality estimated for the predictions still without a label (with a calibrated reference), and
    the model's segments."""
    log = read_window(store, model.name, window, [s.column for s in model.segments])
    calibration = reference.calibration if reference else None
    measured: dict[str, dict[str, list[Measurement]]] = {"model_quality": {}}
    if model.segments:
        measured["model_segments"] = {}
    for version, part in _per_version(log, model.version).items():
        measured["model_quality"][version] = [
            *quality_metrics(part, model.positive_class, model.thresholds.min_label_coverage),
            *business_metrics(
                part, model.positive_class, model.business_metric, model.thresholds.min_label_coverage
            ),
            *(
                estimate_unlabelled(part, calibration, model.positive_class, model.windows.min_rows)
                if calibration
                else []
            ),
        ]
        if model.segments:
            served_seconds = served_window(store, model.name, version, window).seconds
            measured["model_segments"][version] = positive_rates(part, model, reference) + [
                m
                for segment in model.segments
                for m in segment_metrics(
                    part,
                    segment,
                    reference.segment_values.get(segment.column) if reference else None,
                    model,
                    served_seconds,
                    reference.segment_positive_rates if reference else {},
                )
            ]
    return measured


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def record_results(
    store: Store,
    model: Model,
    window: Window,
    by_kind: dict[str, dict[str, list[Measurement]]],
    flow_run_id: str | None,
) -> int:
    """Save each kind's results per model version; returns how many were saved."""
    return sum(
        save_results(store, kind, model.name, version, window, measurements, flow_run_id)
        for kind, by_version in by_kind.items()
        for version, measurements in by_version.items()
    )


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def compact_tallies(store: Store) -> int:
    """Fold the intake's appended tally rows into one row per series, so scrapes stay cheap."""
    return fold_tallies(store)
