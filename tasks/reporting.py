"""The model report's figures for one period, against the previous period of the same length.

Everything here returns plain JSON-able data (the report's `summary`, kept with it in the store);
`tasks/report_render.py` turns it into markdown, HTML and a Slack summary.

- Every figure of the period's predictions comes from one set of totals (`ReportData`): the raw
  rows, added up as the intake adds up what arrives, when the store keeps all of them
  (`intake.raw_predictions: all`) and the period holds at most `SAMPLE_ROWS`; else the intake's
  per-bucket aggregates, the period counted to the bucket. The report names its source.
- Quality from the period's labelled predictions, with 95% intervals from a bootstrap of the
  confusion counts (multinomial, fixed seed, so a re-run gives the same figures).
- Quality estimated (CBPE, `tasks/estimation.py`) for the predictions still without a label, by
  score bin (0.01).
- Traffic, latency percentiles (within 1 %, from the latency sketch), business value, segments.
- Incidents of the model and of its datasets' pipelines: time to detect is from the first alert's
  start (when Prometheus fired it) to its arrival at Watchkeeper; time to act to the first
  remediation decision; time to resolve to the incident's resolution. When the fault itself began
  is not known here (`benchmarks/detect.py` measures from the injection).
- Capacity: a least-squares line through the period's collected p95 latency and throughput; when
  it reaches the model's configured limit, if it rises.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from tasks.estimation import Calibration
from tasks.kind_quality import (
    confusion_cells,
    multiclass_scores,
    ranking_quality,
    recommendation_mix,
    regression_scores,
)
from tasks.measurements import Measurement, Window, scores
from tasks.metrics import LOG_COLUMNS, count_predictions, read_window
from tasks.window_totals import (
    VersionTotals,
    business_value,
    estimate_unlabelled,
    estimated_classes,
    estimated_loss,
    merged,
    segment_metrics,
)
from watchkeeper.config import Model, WatchkeeperConfig
from watchkeeper.intake.aggregates import (
    AWAITING,
    ERROR_SKETCH,
    ERRORS,
    ERRORS_OF_LABELLED,
    OUTCOME,
    RANKING_OF_LABELLED,
    RECOMMENDED,
    VALUE,
    BucketTotals,
    Served,
    name_of,
    outcome_of,
    parts,
    score_bin,
    segment_value,
)
from watchkeeper.intake.checks import class_name
from watchkeeper.intake.kinds import BINARY, MULTICLASS, RANKING, REGRESSION
from watchkeeper.store import Store
from watchkeeper.store.actions import actions_of_incidents
from watchkeeper.store.buckets import bucket_totals, window_totals
from watchkeeper.store.incidents import incidents_of_model
from watchkeeper.store.schema import EvaluationResult

SAMPLE_ROWS = 200_000  # a period's raw rows read whole up to this many; aggregates beyond
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BOOTSTRAP_DRAWS = 1000
CHART_BINS = 48
MIN_TREND_SPAN = timedelta(minutes=30)


@dataclass(frozen=True)
class Period(Window):
    """A report's period: a window that knows the one before it."""

    @property
    def previous(self) -> Period:
        return Period(self.start - (self.end - self.start), self.start)


def with_intervals(tp: int, fp: int, tn: int, fn: int) -> dict[str, dict[str, float]]:
    """Each score with the 2.5% and 97.5% percentiles of a multinomial bootstrap of the counts."""
    n = tp + fp + tn + fn
    point = scores(tp, fp, tn, fn)
    draws = np.random.default_rng(0).multinomial(n, np.array([tp, fp, tn, fn]) / n, size=BOOTSTRAP_DRAWS)
    sampled = [scores(*row) for row in draws]
    return {
        name: {
            "value": round(value, 4),
            "low": round(float(np.percentile([s[name] for s in sampled], 2.5)), 4),
            "high": round(float(np.percentile([s[name] for s in sampled], 97.5)), 4),
        }
        for name, value in point.items()
    }


def quality_summary(totals: VersionTotals, model: Model) -> dict[str, Any]:
    """Served and labelled predictions, and the scores of the labelled ones by the model's task
    (`headline` names the score the report leads with)."""
    served, labelled = round(totals.served), round(totals.labelled)
    summary: dict[str, Any] = {
        "task": model.task,
        "served": served,
        "labelled": labelled,
        "label_coverage": round(labelled / served, 4) if served else 0.0,
        "headline": HEADLINE_SCORES.get(model.task, "accuracy").format(k=model.ranking.k[0]),
    }
    if model.task == RANKING:
        return {**summary, **_ranking_summary(totals, model)}
    if model.task == MULTICLASS:
        return {**summary, **_multiclass_summary(confusion_cells(totals.measure(OUTCOME)))}
    if model.task == REGRESSION:
        found = regression_scores(totals.measure(ERRORS_OF_LABELLED), totals.measure(ERROR_SKETCH))
        return {**summary, **_regression_summary(found)}
    tp, fp, tn, fn = (round(n) for n in totals.confusion(model.positive_class))
    summary["confusion"] = {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    if labelled:
        summary["scores"] = with_intervals(tp, fp, tn, fn)
    return summary


HEADLINE_SCORES = {REGRESSION: "mae", RANKING: "ndcg_at_{k}"}
MULTICLASS_SCORES = ("accuracy", "f1_macro", "f1_weighted")


def _ranking_summary(totals: VersionTotals, model: Model) -> dict[str, Any]:
    """Per k: precision, recall, NDCG and hit rate, then MRR (means of per-request scores: no
    intervals); and the catalogue coverage when the catalogue's size is configured."""
    found = ranking_quality(totals.measure(RANKING_OF_LABELLED), model.ranking.k)
    scores: dict[str, dict[str, float]] = {}
    for name in ("precision", "recall", "ndcg", "hit_rate"):
        for k in model.ranking.k:
            value = next(
                (m.value for m in found if m.metric == f"{name}_at_k" and m.labels["k"] == str(k)), None
            )
            if value is not None:
                scores[f"{name}_at_{k}"] = {"value": round(value, 4)}
    scores.update({m.metric: {"value": round(m.value, 4)} for m in found if m.metric == "mrr"})
    mix = recommendation_mix(totals.measure(RECOMMENDED), Counter(), model.ranking.catalogue_size)
    return {"scores": scores, "recommendations": {m.metric: round(m.value, 4) for m in mix}}


def _multiclass_summary(cells: Counter[tuple[str, str]]) -> dict[str, Any]:
    """Accuracy and macro and weighted F1 with bootstrap intervals (multinomial over the confusion
    cells, fixed seed), each class's scores, and the confusion cells."""
    if not cells:
        return {"classes": [], "confusion_cells": []}
    found = multiclass_scores(cells)
    keys = sorted(cells)  # the draws depend on the order: the same counts give the same interval
    n = round(sum(cells.values()))
    draws = np.random.default_rng(0).multinomial(
        n, np.array([cells[k] for k in keys]) / sum(cells.values()), size=BOOTSTRAP_DRAWS
    )
    sampled = [
        {
            m.metric: m.value
            for m in multiclass_scores(Counter(dict(zip(keys, row, strict=True))))
            if not m.labels
        }
        for row in draws
    ]
    point = {m.metric: m.value for m in found if not m.labels}
    per_class: dict[str, dict[str, float]] = {}
    for m in found:
        if "class" in m.labels:
            per_class.setdefault(m.labels["class"], {})[m.metric.removeprefix("class_")] = round(m.value, 4)
    return {
        "scores": {
            name: {
                "value": round(point[name], 4),
                "low": round(float(np.percentile([s[name] for s in sampled], 2.5)), 4),
                "high": round(float(np.percentile([s[name] for s in sampled], 97.5)), 4),
            }
            for name in MULTICLASS_SCORES
        },
        "classes": [{"class": name, **figures} for name, figures in sorted(per_class.items())],
        "confusion_cells": [
            {"predicted": p, "actual": a, "count": round(n)} for (p, a), n in sorted(cells.items())
        ],
    }


REGRESSION_SCORES = ("mae", "rmse", "mean_error", "mape", "r2")


def _regression_summary(found: list[Measurement]) -> dict[str, Any]:
    """The errors' scores (no intervals: the buckets keep sums, not the rows to resample) and the
    absolute error's quantiles."""
    point = {m.metric: m.value for m in found if not m.labels}
    return {
        "scores": {name: {"value": round(point[name], 6)} for name in REGRESSION_SCORES if name in point},
        "mape_excluded_labels": round(point.get("mape_excluded_labels", 0.0)),
        "absolute_error": {
            m.labels["quantile"]: round(m.value, 6) for m in found if m.metric == "absolute_error_quantile"
        },
    }


def estimated_summary(
    totals: VersionTotals, model: Model, calibration: Calibration | None
) -> dict[str, Any] | None:
    """CBPE for the period's served predictions that still have no label (binary models)."""
    if calibration is None or model.task != BINARY:
        return None
    found = {m.metric: m.value for m in estimate_unlabelled(totals, calibration, model.positive_class, 1)}
    if not found.get("estimated_rows"):
        return {"rows": 0}
    return {
        "rows": round(found["estimated_rows"]),
        **{k: round(found[f"estimated_{k}"], 4) for k in ("accuracy", "precision", "recall", "f1")},
        "accuracy_standard_error": round(found["estimated_accuracy_standard_error"], 4),
    }


def traffic_summary(totals: VersionTotals, period: Period) -> dict[str, Any]:
    requests, errors = round(totals.requests), round(totals.total(ERRORS))
    summary: dict[str, Any] = {
        "requests": requests,
        "errors": errors,
        "error_rate": round(errors / requests, 4) if requests else 0.0,
        "throughput_rps": round(requests / period.seconds, 3),
    }
    for q in (50, 95, 99):
        latency = totals.latency_quantile(q / 100)
        if latency is not None:
            summary[f"latency_p{q}_seconds"] = round(latency, 4)
    return summary


def business_summary(totals: VersionTotals, model: Model) -> dict[str, Any]:
    """Value of correct positive decisions (fraud caught, loans approved well), the value of the
    positives missed, and the detection rate; for multiclass and regression models, the value they
    earned (`earns_business_value`) alone."""
    if model.task != BINARY:
        value = business_value(totals, model)
        return {
            "metric": model.business_metric,
            "value": round(value, 2),
            "missed_value": None,
            "detection_rate": None,
        }
    positive = class_name(model.positive_class)
    value = missed = 0.0
    for text, amount in totals.measure(VALUE).items():
        predicted, actual = parts(text)
        if actual == positive:
            value, missed = (value + amount, missed) if predicted == positive else (value, missed + amount)
    tp, _fp, _tn, fn = totals.confusion(model.positive_class)
    return {
        "metric": model.business_metric,
        "value": round(value, 2),
        "missed_value": round(missed, 2),
        "detection_rate": round(tp / (tp + fn), 4) if tp + fn else None,
    }


def segment_movement(
    current: VersionTotals, previous: VersionTotals, model: Model, kept: dict[str, list[str]], period: Period
) -> list[dict[str, Any]]:
    """Each segment's figures now and in the previous period, ranked by how far they moved: the
    larger of the change in accuracy and in positive rate (a regression model: the relative change
    of its MAE)."""
    rows = []
    for segment in model.segments:
        values = kept.get(segment.column)
        now = _by_segment(segment_metrics(current, segment, values, model, period.seconds, {}))
        before = _by_segment(segment_metrics(previous, segment, values, model, period.seconds, {}))
        for name, figures in now.items():
            earlier = before.get(name, {})
            moves = [
                abs(figures[m] - earlier[m])
                for m in ("segment_accuracy", "segment_positive_rate", "segment_ndcg")
                if m in figures and m in earlier
            ]
            if earlier.get("segment_mae") and "segment_mae" in figures:
                moves.append(abs(figures["segment_mae"] / earlier["segment_mae"] - 1))
            rows.append(
                {
                    "column": segment.column,
                    "segment": name,
                    "requests": int(figures.get("segment_request_count", 0)),
                    "positive_rate": _rounded(figures.get("segment_positive_rate")),
                    "previous_positive_rate": _rounded(earlier.get("segment_positive_rate")),
                    "accuracy": _rounded(figures.get("segment_accuracy")),
                    "previous_accuracy": _rounded(earlier.get("segment_accuracy")),
                    "mae": _rounded(figures.get("segment_mae")),
                    "previous_mae": _rounded(earlier.get("segment_mae")),
                    "ndcg": _rounded(figures.get("segment_ndcg")),
                    "previous_ndcg": _rounded(earlier.get("segment_ndcg")),
                    "moved": round(max(moves), 4) if moves else None,
                }
            )
    return sorted(rows, key=lambda r: (-(r["moved"] or 0.0), -r["requests"]))


def _by_segment(measurements: list) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    for m in measurements:
        found.setdefault(m.labels["segment"], {})[m.metric] = m.value
    return found


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _series(
    store: Store, kind: str, subject: str, metric: str, period: Period
) -> list[tuple[datetime, float, dict]]:
    with store.reading() as session:
        rows = session.execute(
            select(
                EvaluationResult.window_end,
                EvaluationResult.value,
                EvaluationResult.details,
                EvaluationResult.labels,
            )
            .where(
                EvaluationResult.kind == kind,
                EvaluationResult.subject == subject,
                EvaluationResult.metric == metric,
                EvaluationResult.window_end > period.start,
                EvaluationResult.window_end <= period.end,
            )
            .order_by(EvaluationResult.window_end)
        ).all()
    return [(end, value, {**(details or {}), **(labels or {})}) for end, value, details, labels in rows]


def drift_summary(
    store: Store, model: Model, period: Period, evidently_project: str | None, ui_url: str | None
) -> dict[str, Any]:
    """The period's drift evaluations: share of drifted features, which drifted, and each snapshot."""
    shares = _series(store, "drift", model.name, "drift_share", period)
    drifted = _series(store, "drift", model.name, "drift_detected", period)
    windows = []
    for end, share, details in shares:
        features = sorted(
            d["feature_name"] for e, v, d in drifted if e == end and v >= 1 and "feature_name" in d
        )
        snapshot = details.get("snapshot_id")
        link = (
            f"{ui_url.rstrip('/')}/projects/{evidently_project}/reports/{snapshot}"
            if ui_url and evidently_project and snapshot
            else None
        )
        windows.append(
            {
                "window_end": end.isoformat(),
                "drift_share": round(share, 4),
                "drifted": features,
                "snapshot_id": snapshot,
                "html": details.get("html"),
                "link": link,
            }
        )
    return {
        "evaluations": len(windows),
        "max_share": max((w["drift_share"] for w in windows), default=None),
        "windows_with_drift": sum(1 for w in windows if w["drifted"]),
        "windows": windows,
    }


def data_quality_summary(
    store: Store, config: WatchkeeperConfig, model: Model, period: Period
) -> list[dict[str, Any]]:
    found = []
    for dataset in config.datasets_of(model.name):
        series = _series(store, "data_quality", dataset.name, "quality_score", period)
        if series:
            worst = min(series, key=lambda s: s[1])
            found.append(
                {
                    "dataset": dataset.name,
                    "evaluations": len(series),
                    "min_score": round(worst[1], 4),
                    "min_at": worst[0].isoformat(),
                    "mean_score": round(float(np.mean([s[1] for s in series])), 4),
                }
            )
    return found


def incident_summary(
    store: Store, config: WatchkeeperConfig, model: Model, period: Period
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The incidents of the model (and of its datasets' pipelines) in the period, with time to
    detect, act and resolve, and their remediation."""
    pipelines = sorted({d.pipeline for d in config.datasets_of(model.name) if d.pipeline})
    incidents = incidents_of_model(store, model.name, pipelines, period.start, period.end)
    actions = actions_of_incidents(store, [i["id"] for i in incidents])
    for incident in incidents:
        first = datetime.fromisoformat(incident["first_alert_at"])
        received = datetime.fromisoformat(incident["first_received_at"])
        resolved = incident["resolved_at"] and datetime.fromisoformat(incident["resolved_at"])
        acted = [
            datetime.fromisoformat(a["decided_at"]) for a in actions if a["incident_id"] == incident["id"]
        ]
        incident["time_to_detect_seconds"] = round(max(0.0, (received - first).total_seconds()), 1)
        incident["time_to_act_seconds"] = round((min(acted) - first).total_seconds(), 1) if acted else None
        incident["time_to_resolve_seconds"] = (
            round((resolved - first).total_seconds(), 1) if resolved else None
        )
    kept = ("incident_id", "playbook", "action", "target", "decision", "status", "decided_at", "reason")
    return incidents, [{k: a[k] for k in kept} for a in actions]


def trend_to_limit(
    points: list[tuple[datetime, float]], limit: float | None, now: datetime
) -> dict[str, Any] | None:
    """The least-squares line through `points`: its slope per hour, and when it reaches `limit`.
    None below `MIN_TREND_SPAN` of history: minutes of start-up measurements make wild lines."""
    if len(points) < 3 or points[-1][0] - points[0][0] < MIN_TREND_SPAN:
        return None
    hours = np.array([(t - now).total_seconds() / 3600 for t, _ in points])
    values = np.array([v for _, v in points])
    slope, intercept = np.polyfit(hours, values, 1)
    found: dict[str, Any] = {
        "current": round(float(values[-1]), 4),
        "slope_per_hour": round(float(slope), 6),
        "limit": limit,
        "reaches_limit_at": None,
    }
    if limit is not None and slope > 0 and intercept < limit:
        found["reaches_limit_at"] = (now + timedelta(hours=float((limit - intercept) / slope))).isoformat()
    elif limit is not None and intercept >= limit:
        found["reaches_limit_at"] = now.isoformat()
    return found


def capacity_summary(store: Store, model: Model, period: Period) -> dict[str, Any]:
    thresholds = model.thresholds
    latency = [
        (t, v) for t, v, _ in _series(store, "model_traffic", model.name, "latency_p95_seconds", period)
    ]
    traffic = [(t, v) for t, v, _ in _series(store, "model_traffic", model.name, "throughput_rps", period)]
    return {
        "latency_p95_seconds": trend_to_limit(latency, thresholds.max_latency_p95_seconds, period.end),
        "throughput_rps": trend_to_limit(traffic, thresholds.capacity_rps, period.end),
    }


def _outcome(value: object, model: Model) -> str:
    """A raw row's prediction or label (a class name) as the intake counts it for the model's task."""
    return name_of(value) if model.task == BINARY else outcome_of(value, None, model)


def log_totals(log: pd.DataFrame, model: Model) -> VersionTotals:
    """The raw rows of `read_window` added up as the intake adds up what arrives."""
    buckets = BucketTotals()
    segments = [s.column for s in model.segments if s.column in log]
    columns = [c for c in LOG_COLUMNS if c != "timestamp"]
    for row in log[columns + segments].itertuples(index=False):
        rid, version, prediction, score, latency, error, label, value, *values = row
        failed = bool(error) or prediction is None
        facts = Served(
            model.name,
            rid,
            version,
            EPOCH,
            None if failed else _outcome(prediction, model),
            None if failed or pd.isna(score) or model.task == REGRESSION else score_bin(score),
            tuple(
                (column, segment_value(v, None, column)) for column, v in zip(segments, values, strict=True)
            ),
            model.task,
        )
        buckets.prediction(facts, None if pd.isna(latency) else latency)
        if label is not None:
            buckets.label(facts, _outcome(label, model), None if pd.isna(value) else value)
    return VersionTotals(buckets.measures())


def _realised_quality(totals: VersionTotals, model: Model) -> float | None:
    """The kind's headline figure over the labelled predictions (None without labels): a
    classifier's accuracy, a regression model's MAE, a ranking model's NDCG at its first k."""
    if model.task == REGRESSION:
        sums = totals.measure(ERRORS_OF_LABELLED)
        return sums["abs"] / sums["n"] if sums["n"] > 0 else None
    if model.task == RANKING:
        first = {"k": str(model.ranking.k[0])}
        found = ranking_quality(totals.measure(RANKING_OF_LABELLED), model.ranking.k)
        return next((m.value for m in found if m.metric == "ndcg_at_k" and m.labels == first), None)
    if model.task == MULTICLASS:
        cells = confusion_cells(totals.measure(OUTCOME))
        labelled = sum(cells.values())
        return sum(n for (p, a), n in cells.items() if p == a) / labelled if labelled else None
    tp, fp, tn, fn = totals.confusion(model.positive_class)
    return (tp + tn) / (tp + fp + tn + fn) if tp + fp + tn + fn else None


def _estimated_quality(totals: VersionTotals, model: Model, calibration: Calibration | None) -> float | None:
    """The headline figure estimated for the predictions still without a label: CBPE accuracy
    (binary, multiclass with scores), DLE MAE (regression); None for a ranking model."""
    if model.task == REGRESSION:
        found = {m.metric: m.value for m in estimated_loss(totals, 1)}
    elif model.task == MULTICLASS:
        found = {m.metric: m.value for m in estimated_classes(totals, 1)}
    elif model.task == BINARY and calibration is not None:
        return (estimated_summary(totals, model, calibration) or {}).get("accuracy")
    else:
        return None
    return found.get("estimated_mae" if model.task == REGRESSION else "estimated_accuracy")


def series_point(totals: VersionTotals, model: Model, calibration: Calibration | None) -> dict[str, Any]:
    requests = totals.requests
    return {
        "requests": round(requests),
        "error_rate": totals.total(ERRORS) / requests if requests else 0.0,
        "p50": totals.latency_quantile(0.5),
        "p95": totals.latency_quantile(0.95),
        "quality": _realised_quality(totals, model),
        "estimated_quality": _estimated_quality(totals, model, calibration),
    }


def _series_of(
    points: list[tuple[pd.Timestamp, VersionTotals]], model: Model, calibration: Calibration | None
) -> dict[str, list]:
    series: dict[str, list] = {
        k: [] for k in ("at", "requests", "error_rate", "p50", "p95", "quality", "estimated_quality")
    }
    for start, totals in points:
        series["at"].append(start.isoformat())
        for key, value in series_point(totals, model, calibration).items():
            series[key].append(value)
    return series


def log_series(
    log: pd.DataFrame, model: Model, period: Period, calibration: Calibration | None
) -> dict[str, list]:
    """Per time bin of the raw rows: requests, error rate, latency p50/p95, realised accuracy and the
    CBPE estimate for the same predictions taken as unlabelled (how well the estimate tracks reality)."""
    times = pd.to_datetime(log["timestamp"], utc=True)
    # From the period's first prediction: a model that started late still gets readable bins.
    first = max(pd.Timestamp(period.start), times.min()) if len(times) else pd.Timestamp(period.start)
    edges = pd.date_range(first, period.end, periods=CHART_BINS + 1)
    bins = pd.cut(times, edges, right=False, labels=edges[:-1])
    unlabelled = log.assign(label=None)
    points = []
    for start, part in log.groupby(bins, observed=True):
        totals = log_totals(part, model)
        estimated = log_totals(unlabelled.loc[part.index], model).measure(AWAITING)
        points.append((pd.Timestamp(start), VersionTotals({**totals.totals, AWAITING: estimated})))
    return _series_of(points, model, calibration)


def bucket_series(
    by_bucket: dict[datetime, VersionTotals], model: Model, calibration: Calibration | None
) -> dict[str, list]:
    """The same series from the per-bucket aggregates, each bin a whole number of buckets."""
    starts = sorted(by_bucket)
    per_bin = max(1, -(-len(starts) // CHART_BINS))
    points = []
    for index in range(0, len(starts), per_bin):
        group = starts[index : index + per_bin]
        points.append((pd.Timestamp(group[0]), merged([by_bucket[start] for start in group])))
    return _series_of(points, model, calibration)


@dataclass(frozen=True)
class ReportData:
    """A report's figures' source: the raw rows when the store keeps every one of a period small
    enough to read whole; the per-bucket aggregates otherwise (periods counted to the bucket), and
    always for a ranking model (its raw rows' lists are not re-ranked here)."""

    source: str
    versions: list[str]
    current: VersionTotals
    previous: VersionTotals
    series: dict[str, list]


def report_data(
    store: Store, config: WatchkeeperConfig, model: Model, period: Period, calibration: Calibration | None
) -> ReportData:
    with store.reading() as session:
        rows = (
            count_predictions(session, model.name, period)[0]
            + count_predictions(session, model.name, period.previous)[0]
        )
    if config.intake.raw_predictions >= 1.0 and rows <= SAMPLE_ROWS and model.task != RANKING:
        columns = [s.column for s in model.segments]
        current = read_window(store, model.name, period, columns)
        previous = read_window(store, model.name, period.previous, columns)
        return ReportData(
            "raw rows",
            sorted(set(current["model_version"])) or [model.version],
            log_totals(current, model),
            log_totals(previous, model),
            log_series(current, model, period, calibration),
        )
    with store.reading() as session:
        now = window_totals(session, model.name, period.start, period.end)
        before = window_totals(session, model.name, period.previous.start, period.previous.end)
        by_bucket = bucket_totals(session, model.name, period.start, period.end)
    return ReportData(
        f"aggregates per {config.intake.bucket} bucket",
        sorted(now) or [model.version],
        merged([VersionTotals(t) for t in now.values()]),
        merged([VersionTotals(t) for t in before.values()]),
        bucket_series({start: VersionTotals(t) for start, t in by_bucket.items()}, model, calibration),
    )


def gather_report(
    store: Store,
    config: WatchkeeperConfig,
    model: Model,
    period: Period,
    calibration: Calibration | None,
    segment_values: dict[str, list[str]],
    evidently_project: str | None = None,
) -> dict[str, Any]:
    """Every figure of the model's report for `period` (see the module's docstring)."""
    data = report_data(store, config, model, period, calibration)
    incidents, actions = incident_summary(store, config, model, period)
    return {
        "model": model.name,
        "versions": data.versions,
        "period": {"start": period.start.isoformat(), "end": period.end.isoformat()},
        "previous_period": {
            "start": period.previous.start.isoformat(),
            "end": period.previous.end.isoformat(),
        },
        "source": data.source,
        "quality": quality_summary(data.current, model),
        "previous_quality": quality_summary(data.previous, model),
        "estimated": estimated_summary(data.current, model, calibration),
        "traffic": traffic_summary(data.current, period),
        "previous_traffic": traffic_summary(data.previous, period.previous),
        "business": business_summary(data.current, model),
        "previous_business": business_summary(data.previous, model),
        "drift": drift_summary(store, model, period, evidently_project, config.reports.evidently_ui_url),
        "data_quality": data_quality_summary(store, config, model, period),
        "incidents": incidents,
        "remediation": actions,
        "segments": segment_movement(data.current, data.previous, model, segment_values, period),
        "capacity": capacity_summary(store, model, period),
        "series": data.series,
    }
