"""`/metrics`: a prometheus_client Collector that reads the store on every scrape.

Nothing is kept in process memory, so the numbers are right after a restart and identical from
every replica of the service. Gauges come from the latest evaluated window of each kind and
subject; the latency histograms and intake counters are cumulative counters kept by the intake.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from watchkeeper.config import Model, WatchkeeperConfig
from watchkeeper.intake.checks import ReferenceProfile, ReferenceProfiles
from watchkeeper.intake.kinds import BINARY, MULTICLASS, RANKING, REGRESSION
from watchkeeper.intake.records import PredictionRecord
from watchkeeper.store import Store, executions
from watchkeeper.store.intake import (
    BUCKET,
    FEATURE_KEY_ERRORS,
    FEATURE_KEYS,
    FEATURE_LOOKUP_LATENCY,
    INFERENCE_LATENCY,
    PIPELINE_LATENCY,
    PIPELINE_RECORD_ERRORS,
    PIPELINE_RECORDS,
    SUM,
    intake_counts,
    le_text,
    tally_totals,
)
from watchkeeper.store.remediation import ActionStatus, RemediationAction
from watchkeeper.store.schema import Alert, FlowRunOutbox, Incident, LatestWindow, utcnow

INTAKE_FAMILIES = {
    "predictions": ("watchkeeper_predictions", "Prediction records stored by the intake."),
    "feedback": ("watchkeeper_feedback", "Feedback (ground-truth label) records stored by the intake."),
}


@dataclass(frozen=True)
class Gauge:
    """How one stored result (kind, metric) is exported: its name, help and label names.

    `subject_label` names the result's subject (model or dataset or pipeline); `versioned` adds
    `model_version`; `extra` are label names carried in the result's own labels.
    """

    name: str
    doc: str
    subject_label: str = "model_name"
    versioned: bool = True
    extra: tuple[str, ...] = ()

    @property
    def label_names(self) -> list[str]:
        return [self.subject_label, *(["model_version"] if self.versioned else []), *self.extra]


GAUGES: dict[tuple[str, str], Gauge] = {
    ("model_quality", "accuracy"): Gauge(
        "ai_model_accuracy_score", "Accuracy on labelled predictions (0-1)."
    ),
    ("model_quality", "precision"): Gauge(
        "ai_model_precision_score", "Precision of the positive class (0-1)."
    ),
    ("model_quality", "recall"): Gauge("ai_model_recall_score", "Recall of the positive class (0-1)."),
    ("model_quality", "f1"): Gauge("ai_model_f1_score", "F1 of the positive class (0-1)."),
    ("model_quality", "false_positive_rate"): Gauge(
        "ai_model_false_positive_rate", "False positive rate (0-1)."
    ),
    ("model_quality", "label_coverage_ratio"): Gauge(
        "ai_model_label_coverage_ratio",
        "Share of served predictions in the quality window that have a label.",
    ),
    ("model_quality", "business_impact"): Gauge(
        "ai_business_impact_score",
        "Business value of correct positive decisions in the quality window.",
        versioned=False,
        extra=("metric_type",),
    ),
    ("model_quality", "class_precision"): Gauge(
        "ai_model_class_precision_score",
        "Precision of one class of a multiclass model (0-1).",
        extra=("class",),
    ),
    ("model_quality", "class_recall"): Gauge(
        "ai_model_class_recall_score", "Recall of one class of a multiclass model (0-1).", extra=("class",)
    ),
    ("model_quality", "class_f1"): Gauge(
        "ai_model_class_f1_score", "F1 of one class of a multiclass model (0-1).", extra=("class",)
    ),
    ("model_quality", "class_support"): Gauge(
        "ai_model_class_labelled_predictions",
        "Labelled predictions whose label is this class (multiclass): what its recall is measured on.",
        extra=("class",),
    ),
    ("model_quality", "f1_macro"): Gauge(
        "ai_model_f1_macro_score", "Unweighted mean of a multiclass model's per-class F1 (0-1)."
    ),
    ("model_quality", "f1_weighted"): Gauge(
        "ai_model_f1_weighted_score", "Mean of a multiclass model's per-class F1 weighted by labels (0-1)."
    ),
    ("model_quality", "confusion"): Gauge(
        "ai_model_confusion_matrix_predictions",
        "Labelled predictions per (predicted, actual) class of a multiclass model in the quality window.",
        extra=("predicted_class", "actual_class"),
    ),
    ("model_quality", "mae"): Gauge(
        "ai_model_mae", "Mean absolute error of a regression model's labelled predictions."
    ),
    ("model_quality", "rmse"): Gauge("ai_model_rmse", "Root mean squared error of a regression model."),
    ("model_quality", "mape"): Gauge(
        "ai_model_mape_ratio", "Mean absolute percentage error over the labels that are not zero (ratio)."
    ),
    ("model_quality", "mape_excluded_labels"): Gauge(
        "ai_model_mape_excluded_labels", "Labels left out of the MAPE because they are zero."
    ),
    ("model_quality", "mean_error"): Gauge(
        "ai_model_mean_error", "Mean of prediction - label (bias; positive: the model predicts too high)."
    ),
    ("model_quality", "r2"): Gauge(
        "ai_model_r2_score", "Coefficient of determination of a regression model."
    ),
    ("model_quality", "absolute_error_quantile"): Gauge(
        "ai_model_absolute_error",
        "Quantile of a regression model's absolute error (within 1 %).",
        extra=("quantile",),
    ),
    ("model_quality", "precision_at_k"): Gauge(
        "ai_model_precision_at_k_score",
        "Mean share of a ranked list's first k items the user found relevant (ranking).",
        extra=("k",),
    ),
    ("model_quality", "recall_at_k"): Gauge(
        "ai_model_recall_at_k_score",
        "Mean share of the relevant items found in a ranked list's first k (ranking; requests with one).",
        extra=("k",),
    ),
    ("model_quality", "ndcg_at_k"): Gauge(
        "ai_model_ndcg_at_k_score",
        "Mean NDCG of a ranked list's first k items against every item with feedback (ranking).",
        extra=("k",),
    ),
    ("model_quality", "hit_rate_at_k"): Gauge(
        "ai_model_hit_rate_at_k_score",
        "Share of requests with a relevant item in their list's first k (ranking).",
        extra=("k",),
    ),
    ("model_quality", "mrr"): Gauge(
        "ai_model_mrr_score", "Mean reciprocal rank of the first relevant item (ranking)."
    ),
    ("model_quality", "relevant_requests"): Gauge(
        "ai_model_relevant_requests", "Requests whose feedback has a relevant item (what recall@k averages)."
    ),
    ("model_quality", "catalogue_coverage"): Gauge(
        "ai_model_catalogue_coverage_ratio",
        "Share of the catalogue (ranking.catalogue_size, else the reference's items) recommended.",
    ),
    ("model_quality", "popularity_bias"): Gauge(
        "ai_model_popularity_bias_ratio",
        "Share of the window's recommendations taken by the reference's top 1 % of items.",
    ),
    ("model_quality", "novelty"): Gauge(
        "ai_model_novelty_bits",
        "Mean self-information of the recommended items against the reference's recommendations (bits).",
    ),
    ("model_quality", "recommended_items_drift"): Gauge(
        "ai_model_recommended_items_drift_score",
        "Jensen-Shannon distance between the window's and the reference's recommended items (0-1).",
    ),
    ("model_quality", "estimated_mae"): Gauge(
        "ai_model_estimated_mae",
        "MAE estimated (DLE) for a regression model's served predictions still without a label.",
    ),
    ("model_quality", "estimated_accuracy"): Gauge(
        "ai_model_estimated_accuracy_score",
        "Accuracy estimated (CBPE) for the served predictions still without a label (0-1).",
    ),
    ("model_quality", "target_drift"): Gauge(
        "ai_model_target_drift_score",
        "A regression model's labels against the reference's: Wasserstein distance over the "
        "reference's standard deviation.",
    ),
    ("model_quality", "residual_drift"): Gauge(
        "ai_model_residual_drift_score",
        "A regression model's residuals (prediction - label) against the reference's: Wasserstein "
        "distance over the reference's standard deviation.",
    ),
    ("model_quality", "estimated_f1_macro"): Gauge(
        "ai_model_estimated_f1_macro_score",
        "Macro F1 estimated (CBPE, one class against the rest) for a multiclass model's scored "
        "predictions still without a label (0-1).",
    ),
    ("model_quality", "estimated_precision"): Gauge(
        "ai_model_estimated_precision_score", "Precision estimated (CBPE) before labels arrive (0-1)."
    ),
    ("model_quality", "estimated_recall"): Gauge(
        "ai_model_estimated_recall_score", "Recall estimated (CBPE) before labels arrive (0-1)."
    ),
    ("model_quality", "estimated_f1"): Gauge(
        "ai_model_estimated_f1_score", "F1 estimated (CBPE) before labels arrive (0-1)."
    ),
    ("model_quality", "estimated_accuracy_standard_error"): Gauge(
        "ai_model_estimated_accuracy_standard_error", "Standard error of the estimated accuracy."
    ),
    ("model_quality", "estimated_rows"): Gauge(
        "ai_model_estimated_predictions",
        "Served predictions in the quality window without a label yet (what the estimate covers).",
    ),
    ("model_segments", "positive_rate"): Gauge(
        "ai_model_positive_rate",
        "Share of served predictions in the positive class over the quality window (models with segments).",
    ),
    ("model_segments", "reference_positive_rate"): Gauge(
        "ai_model_reference_positive_rate", "Share of the reference's predictions in the positive class."
    ),
    ("model_segments", "segment_request_count"): Gauge(
        "ai_model_segment_requests",
        "Predictions per segment over the quality window.",
        extra=("segment_column", "segment"),
    ),
    ("model_segments", "segment_throughput_rps"): Gauge(
        "ai_model_segment_throughput_rps",
        "Predictions per second per segment over the quality window.",
        extra=("segment_column", "segment"),
    ),
    ("model_segments", "segment_positive_rate"): Gauge(
        "ai_model_segment_positive_rate",
        "Share of a segment's served predictions in the positive class.",
        extra=("segment_column", "segment"),
    ),
    ("model_segments", "segment_reference_positive_rate"): Gauge(
        "ai_model_segment_reference_positive_rate",
        "Share of a segment's reference predictions in the positive class.",
        extra=("segment_column", "segment"),
    ),
    ("model_segments", "segment_label_coverage_ratio"): Gauge(
        "ai_model_segment_label_coverage_ratio",
        "Share of a segment's served predictions that have a label.",
        extra=("segment_column", "segment"),
    ),
    ("model_segments", "segment_labelled"): Gauge(
        "ai_model_segment_labelled_predictions",
        "A segment's labelled predictions in the quality window.",
        extra=("segment_column", "segment"),
    ),
    ("model_segments", "segment_accuracy"): Gauge(
        "ai_model_segment_accuracy_score",
        "Accuracy of a segment's labelled predictions (published from 30 labels and the coverage floor).",
        extra=("segment_column", "segment"),
    ),
    ("model_segments", "segment_mae"): Gauge(
        "ai_model_segment_mae",
        "Mean absolute error of a segment's labelled predictions (regression; from 30 labels).",
        extra=("segment_column", "segment"),
    ),
    ("model_segments", "segment_ndcg"): Gauge(
        "ai_model_segment_ndcg_score",
        "NDCG at the first configured k of a segment's requests with feedback (ranking; from 30).",
        extra=("segment_column", "segment"),
    ),
    ("model_traffic", "throughput_rps"): Gauge(
        "ai_model_inference_throughput_rps", "Predictions per second over the metrics window."
    ),
    ("model_traffic", "error_rate"): Gauge("ai_model_error_rate", "Share of failed predictions (0-1)."),
    ("model_traffic", "prediction_share"): Gauge(
        "ai_model_prediction_class_share",
        "Share of served predictions per class.",
        extra=("prediction_class",),
    ),
    ("drift", "drift_score"): Gauge(
        "ai_data_drift_score",
        "Drift score of a feature against the reference (method-specific).",
        versioned=False,
        extra=("feature_name",),
    ),
    ("drift", "drift_p_value"): Gauge(
        "ai_data_drift_p_value",
        "P-value of a feature's drift test (lower is more drift).",
        versioned=False,
        extra=("feature_name",),
    ),
    ("drift", "drift_adjusted_p_value"): Gauge(
        "ai_data_drift_adjusted_p_value",
        "P-value of a feature's drift test adjusted across the model's tests (Benjamini-Hochberg).",
        versioned=False,
        extra=("feature_name",),
    ),
    ("drift", "drift_detected"): Gauge(
        "ai_data_drift_detected",
        "1 when the feature drifted by its method's verdict (p-values corrected for multiple testing).",
        versioned=False,
        extra=("feature_name",),
    ),
    ("drift", "drift_share"): Gauge(
        "ai_data_drift_share", "Share of features whose drift test failed.", versioned=False
    ),
    ("drift", "embedding_drift_score"): Gauge(
        "ai_data_embedding_drift_score",
        "Drift score of an embedding feature by its method (model: a classifier's ROC AUC, 0.5 none).",
        versioned=False,
        extra=("feature_name",),
    ),
    ("drift", "embedding_drift_detected"): Gauge(
        "ai_data_embedding_drift_detected",
        "1 when an embedding feature drifted by its method's verdict.",
        versioned=False,
        extra=("feature_name",),
    ),
    ("drift", "embedding_centroid_distance"): Gauge(
        "ai_model_embedding_centroid_distance",
        "Euclidean distance between an embedding's current and reference centroids.",
        versioned=False,
        extra=("feature_name",),
    ),
    ("drift", "prediction_drift_score"): Gauge(
        "ai_prediction_drift_score", "Drift score of the prediction against the reference.", versioned=False
    ),
    ("data_quality", "quality_score"): Gauge(
        "ai_data_quality_score",
        "Data quality score (0-1).",
        subject_label="dataset_name",
        versioned=False,
        extra=("pipeline_name",),
    ),
    ("data_quality", "check_failure_share"): Gauge(
        "ai_data_quality_check_failure_share",
        "Share of values failing one data quality check.",
        subject_label="dataset_name",
        versioned=False,
        extra=("pipeline_name", "check", "column"),
    ),
    ("pipeline", "throughput_records_per_second"): Gauge(
        "ai_pipeline_throughput_records_per_second",
        "Records per second of pipeline processing.",
        subject_label="pipeline_name",
        versioned=False,
    ),
    ("pipeline", "error_rate"): Gauge(
        "ai_pipeline_error_rate",
        "Share of records that failed in the pipeline (0-1).",
        subject_label="pipeline_name",
        versioned=False,
    ),
    ("feature_store", "last_materialized_timestamp_seconds"): Gauge(
        "ai_feature_view_last_materialized_timestamp_seconds",
        "When the view's newest materialised value was written (Unix seconds), from its lookups and "
        "its materialising pipeline's runs.",
        subject_label="feature_store",
        versioned=False,
        extra=("feature_view",),
    ),
    ("feature_store", "null_share"): Gauge(
        "ai_feature_view_null_share",
        "Share of a model's sampled predictions whose value of the view's feature is null or absent.",
        subject_label="feature_store",
        versioned=False,
        extra=("feature_view", "model_name", "feature"),
    ),
    ("feature_store", "default_share"): Gauge(
        "ai_feature_view_default_share",
        "Share of a model's sampled predictions served the store's configured default for the feature.",
        subject_label="feature_store",
        versioned=False,
        extra=("feature_view", "model_name", "feature"),
    ),
}

HISTOGRAMS = {
    INFERENCE_LATENCY: (
        "ai_model_inference_latency_seconds",
        "Inference latency.",
        ["model_name", "model_version"],
    ),
    PIPELINE_LATENCY: (
        "ai_pipeline_processing_latency_seconds",
        "Pipeline stage duration.",
        ["pipeline_name", "stage"],
    ),
    FEATURE_LOOKUP_LATENCY: (
        "ai_feature_store_lookup_latency_seconds",
        "Feature-store lookup latency, per view.",
        ["feature_store", "feature_view"],
    ),
}


@dataclass(frozen=True)
class LatestResult:
    kind: str
    subject: str
    model_version: str
    metric: str
    labels: dict[str, str]
    value: float


def latest_results(session: Session) -> list[LatestResult]:
    """Every result of the most recent window per (kind, subject, model_version)."""
    return [
        LatestResult(row.kind, row.subject, row.model_version, r["metric"], r.get("labels") or {}, r["value"])
        for row in session.scalars(select(LatestWindow))
        for r in row.results
    ]


def evaluation_timestamps(session: Session) -> list[tuple[str, str, float]]:
    """When each kind's latest window was computed for each subject, in Unix seconds."""
    rows = session.execute(
        select(LatestWindow.kind, LatestWindow.subject, func.max(LatestWindow.computed_at)).group_by(
            LatestWindow.kind, LatestWindow.subject
        )
    )
    return [(kind, subject, at.timestamp()) for kind, subject, at in rows]


def evaluation_freshness(stamps: Iterable[tuple[str, str, float]]) -> GaugeMetricFamily:
    freshness = GaugeMetricFamily(
        "watchkeeper_evaluation_timestamp_seconds",
        "When Watchkeeper last evaluated this kind for this subject (Unix seconds).",
        labels=["kind", "model_name"],
    )
    for kind, subject, seconds in stamps:
        freshness.add_metric([kind, subject], seconds)
    return freshness


def gauge_families(results: Iterable[LatestResult]) -> list[GaugeMetricFamily]:
    families: dict[str, GaugeMetricFamily] = {}
    for result in results:
        gauge = GAUGES.get((result.kind, result.metric))
        if gauge is None:
            continue
        family = families.get(gauge.name)
        if family is None:
            family = families[gauge.name] = GaugeMetricFamily(gauge.name, gauge.doc, labels=gauge.label_names)
        values = [result.subject, *([result.model_version] if gauge.versioned else [])]
        values += [str(result.labels.get(name, "")) for name in gauge.extra]
        family.add_metric(values, result.value)
    return list(families.values())


def no_bounds(_family: str, _subject: str) -> Sequence[float]:
    return ()


def histogram_bounds(config: WatchkeeperConfig) -> Callable[[str, str], Sequence[float]]:
    """Each histogram's configured bounds: a model's latency buckets, a pipeline's, a feature store's."""
    by_family = {
        INFERENCE_LATENCY: {m.name: m.latency_buckets for m in config.models},
        PIPELINE_LATENCY: {p.name: p.latency_buckets for p in config.pipelines},
        FEATURE_LOOKUP_LATENCY: {f.name: f.latency_buckets for f in config.feature_stores},
    }
    return lambda family, subject: by_family.get(family, {}).get(subject, ())


class LatencyExemplars:
    """Each inference latency bucket's latest traced request, (model, version, bound) -> exemplar:
    what a slow bucket on a dashboard links to. Kept in this process's memory, as prometheus_client
    keeps its own histograms' exemplars: at most one per bucket of each model version. Only
    predictions that carry a `trace_id` cost anything (a bisection)."""

    def __init__(self, bounds_for: Callable[[str, str], Sequence[float]] = no_bounds) -> None:
        self.bounds_for = bounds_for
        self._bounds: dict[str, list[float]] = {}
        self._latest: dict[tuple[str, str, float], Exemplar] = {}

    def observe(self, records: Iterable[PredictionRecord]) -> None:
        for record in records:
            if record.trace_id is None or record.latency_seconds is None:
                continue
            bounds = self._bounds.get(record.model_name)
            if bounds is None:
                bounds = self._bounds[record.model_name] = sorted(
                    self.bounds_for(INFERENCE_LATENCY, record.model_name)
                )
            at = bisect.bisect_left(bounds, record.latency_seconds)
            le = bounds[at] if at < len(bounds) else math.inf
            self._latest[(record.model_name, record.model_version, le)] = Exemplar(
                {"trace_id": record.trace_id}, record.latency_seconds, record.timestamp.timestamp()
            )

    def of(self, family: str, subject: str, variant: str, le: float) -> Exemplar | None:
        return self._latest.get((subject, variant, le)) if family == INFERENCE_LATENCY else None


def no_exemplars(_family: str, _subject: str, _variant: str, _le: float) -> None:
    return None


def histogram_families(
    tallies: Iterable[tuple[str, str, str, str, float]],
    bounds_for: Callable[[str, str], Sequence[float]] = no_bounds,
    exemplar_of: Callable[[str, str, str, float], Exemplar | None] = no_exemplars,
) -> list[HistogramMetricFamily]:
    """Prometheus histograms from the intake's bucket and sum tallies (see `histogram_tallies`).
    The intake tallies only the buckets that were hit; every configured bound (`bounds_for`) is
    exported, empty or not, so that each series always has all its buckets. A bucket with an
    exemplar (`exemplar_of`) carries it (OpenMetrics exposition only)."""
    buckets: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    sums: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for family, subject, variant, detail, total in tallies:
        if family.startswith(BUCKET):
            buckets[(family.removeprefix(BUCKET), subject, variant)].append((float(detail), total))
        elif family.startswith(SUM):
            sums[(family.removeprefix(SUM), subject, variant)][detail] = total
    families = {
        key: HistogramMetricFamily(name, doc, labels=labels)
        for key, (name, doc, labels) in HISTOGRAMS.items()
    }
    for (family, subject, variant), series in sorted(sums.items()):
        if family not in families:
            continue
        counts = dict.fromkeys(map(float, bounds_for(family, subject)), 0.0)
        for le, total in buckets[(family, subject, variant)]:
            counts[le] = counts.get(le, 0.0) + total
        cumulative: list[Any] = []
        running = 0.0
        for le, total in sorted(counts.items()):
            running += total
            if not math.isinf(le):
                cumulative.append(_bucket(le_text(le), running, exemplar_of(family, subject, variant, le)))
        infinite = exemplar_of(family, subject, variant, math.inf)
        cumulative.append(_bucket("+Inf", series.get("count", 0.0), infinite))
        families[family].add_metric([subject, variant], cumulative, series.get("sum", 0.0))
    return list(families.values())


def _bucket(le: str, count: float, exemplar: Exemplar | None) -> tuple:
    return (le, count) if exemplar is None else (le, count, exemplar)


@dataclass(frozen=True)
class TallyCounter:
    """How one tally family is exported: counter name, help, and the labels its keys fill."""

    name: str
    doc: str
    labels: tuple[str, ...]


TALLY_COUNTERS = {
    "prediction_errors": TallyCounter(
        "ai_model_prediction_errors",
        "Predictions that failed (error: true).",
        ("model_name", "model_version"),
    ),
    "predictions_by_class": TallyCounter(
        "ai_model_predictions_by_class",
        "Served predictions per class (classes outside the reference's under _other_).",
        ("model_name", "model_version", "prediction_class"),
    ),
    "labelled": TallyCounter(
        "ai_model_labelled_predictions",
        "Predictions whose ground-truth label arrived, counted on arrival.",
        ("model_name", "model_version"),
    ),
    "misclassified": TallyCounter(
        "ai_model_misclassified_predictions",
        "Labelled predictions whose class differs from the label, counted on the label's arrival.",
        ("model_name", "model_version"),
    ),
    "overprediction": TallyCounter(
        "ai_model_overprediction",
        "Sum of prediction - label over a regression model's labels above which it predicted.",
        ("model_name", "model_version"),
    ),
    "underprediction": TallyCounter(
        "ai_model_underprediction",
        "Sum of label - prediction over a regression model's labels below which it predicted.",
        ("model_name", "model_version"),
    ),
    "ndcg_sum": TallyCounter(
        "ai_model_ndcg_sum",
        "Sum of NDCG at the first configured k over a ranking model's requests with feedback.",
        ("model_name", "model_version"),
    ),
    "business_value": TallyCounter(
        "ai_business_value",
        "Business value of correct positive decisions, counted on the label's arrival.",
        ("model_name", "metric_type"),
    ),
    "records_checked": TallyCounter(
        "ai_data_records_checked",
        "Prediction records checked against the reference at intake.",
        ("dataset_name", "model_name", "pipeline_name"),
    ),
    "record_check_failures": TallyCounter(
        "ai_data_record_check_failures",
        "Prediction records failing one intake check on one column.",
        ("dataset_name", "model_name", "pipeline_name", "check", "column"),
    ),
    FEATURE_KEYS: TallyCounter(
        "ai_feature_store_keys",
        "Entity keys looked up in a feature view.",
        ("feature_store", "feature_view"),
    ),
    FEATURE_KEY_ERRORS: TallyCounter(
        "ai_feature_store_key_errors",
        "Entity keys whose lookup failed or found no value.",
        ("feature_store", "feature_view"),
    ),
    PIPELINE_RECORDS: TallyCounter(
        "ai_pipeline_records",
        "Records a pipeline stage handled, from /v1/pipeline-runs (the anomaly rules' error ratio).",
        ("pipeline_name", "stage"),
    ),
    PIPELINE_RECORD_ERRORS: TallyCounter(
        "ai_pipeline_record_errors",
        "Records a pipeline stage failed, from /v1/pipeline-runs.",
        ("pipeline_name", "stage"),
    ),
}


def tally_families(
    totals: Iterable[tuple[str, str, str, str, float]], datasets: dict[str, tuple[str, str]]
) -> list[CounterMetricFamily]:
    """`datasets` maps a dataset to its (model, pipeline), which the dataset families are labelled with."""
    families = {
        family: CounterMetricFamily(c.name, c.doc, labels=list(c.labels))
        for family, c in TALLY_COUNTERS.items()
    }
    for family, subject, variant, detail, total in totals:
        if family not in families:
            continue
        if family == "records_checked":
            values = [subject, *datasets.get(subject, (subject, ""))]
        elif family == "record_check_failures":
            values = [subject, *datasets.get(subject, (subject, "")), variant, detail]
        elif family == "business_value":
            values = [subject, detail]
        elif family == "predictions_by_class":
            values = [subject, variant, detail]
        else:
            values = [subject, variant]
        families[family].add_metric(values, total)
    return list(families.values())


def reference_families(profiles: Iterable[ReferenceProfile]) -> list[GaugeMetricFamily]:
    nulls = GaugeMetricFamily(
        "ai_data_reference_null_share",
        "Share of a column's values that are null in the reference (intake null checks count beyond it).",
        labels=["dataset_name", "column"],
    )
    classes = GaugeMetricFamily(
        "ai_model_reference_class_share",
        "Share of the reference's predictions in each class.",
        labels=["model_name", "prediction_class"],
    )
    for profile in profiles:
        for column, spec in profile.columns.items():
            nulls.add_metric([profile.dataset, column], spec.null_share)
        for name, share in profile.class_shares.items():
            classes.add_metric([profile.model, name], share)
    return [nulls, classes]


def threshold_families(config: WatchkeeperConfig) -> list[GaugeMetricFamily]:
    """Per-model thresholds from the config, which rules compare with (the seed's value when absent)."""
    floor = GaugeMetricFamily(
        "ai_model_min_throughput_rps",
        "Configured throughput floor: ModelThroughputLow fires below it (10 where no model sets it).",
        labels=["model_name", "model_version"],
    )
    latency = GaugeMetricFamily(
        "ai_model_latency_limit_seconds",
        "Configured p95 latency limit: the capacity trend warns before p95 reaches it.",
        labels=["model_name", "model_version"],
    )
    capacity = GaugeMetricFamily(
        "ai_model_capacity_rps",
        "Configured throughput the model's serving sustains: the capacity trend warns before it.",
        labels=["model_name", "model_version"],
    )
    segment_limits = GaugeMetricFamily(
        "ai_model_segment_limits",
        "Configured segment thresholds: accuracy floor and allowed positive-rate shift.",
        labels=["model_name", "model_version", "limit"],
    )
    quality_limits = GaugeMetricFamily(
        "ai_model_quality_limits",
        "Configured quality thresholds of multiclass and regression models (the rules compare with them).",
        labels=["model_name", "model_version", "limit"],
    )
    for model in config.models:
        key = [model.name, model.version]
        thresholds = model.thresholds
        for limit, value in quality_limits_of(model).items():
            quality_limits.add_metric([*key, limit], value)
        floor.add_metric(key, thresholds.min_throughput_rps)
        latency.add_metric(key, thresholds.max_latency_p95_seconds)
        if thresholds.capacity_rps is not None:
            capacity.add_metric(key, thresholds.capacity_rps)
        if model.segments:
            segment_limits.add_metric([*key, "accuracy_warning"], thresholds.segment_accuracy_warning)
            segment_limits.add_metric([*key, "positive_rate_shift"], thresholds.segment_positive_rate_shift)
    return [floor, latency, capacity, segment_limits, quality_limits]


def feature_store_families(config: WatchkeeperConfig) -> list[GaugeMetricFamily]:
    """Each feature store's configured limits, and which exporter instance is the store (the Redis
    rules join on it)."""
    max_age = GaugeMetricFamily(
        "ai_feature_view_max_age_seconds",
        "Configured age the view's newest value may reach: FeatureViewStale fires beyond it.",
        labels=["feature_store", "feature_view"],
    )
    latency = GaugeMetricFamily(
        "ai_feature_store_latency_limit_seconds",
        "Configured p95 lookup latency: FeatureStoreLatencyHigh fires above it.",
        labels=["feature_store"],
    )
    info = GaugeMetricFamily(
        "ai_feature_store_info",
        "1 per configured feature store: its kind and its exporter's instance label.",
        labels=["feature_store", "kind", "exporter_instance"],
    )
    for feature_store in config.feature_stores:
        latency.add_metric([feature_store.name], feature_store.latency_limit_seconds)
        info.add_metric([feature_store.name, feature_store.kind, feature_store.instance or ""], 1.0)
        for view in feature_store.views:
            max_age.add_metric([feature_store.name, view.name], view.max_age.total_seconds())
    return [max_age, latency, info]


def quality_limits_of(model: Model) -> dict[str, float]:
    """The limits the quality rules compare with; unset ones are absent, so their rules stay quiet
    (the accuracy rules then use the seed's 0.85 and 0.75)."""
    thresholds = model.thresholds
    accuracy = {
        "accuracy_warning": thresholds.accuracy_warning,
        "accuracy_critical": thresholds.accuracy_critical,
    }
    configured = {limit: value for limit, value in accuracy.items() if value is not None}
    if model.task == MULTICLASS:
        return {
            **configured,
            "f1_macro_warning": thresholds.f1_macro_warning,
            "class_recall_warning": thresholds.class_recall_warning,
        }
    if model.task == BINARY:
        return configured
    if model.task == REGRESSION:
        found = {
            "mae_warning": thresholds.mae_warning,
            "mae_critical": thresholds.mae_critical,
            "mean_error_limit": thresholds.mean_error_limit,
        }
        return {limit: value for limit, value in found.items() if value is not None}
    if model.task == RANKING:
        found = {
            "ndcg_warning": thresholds.ndcg_warning,
            "recommendation_drift_limit": thresholds.recommendation_drift_limit,
        }
        return {limit: value for limit, value in found.items() if value is not None}
    return {}


def operations_families(session: Session) -> list[Metric]:
    """Alerts, incidents, remediation decisions and the run outbox, counted from their tables."""
    received = CounterMetricFamily(
        "watchkeeper_alerts_received", "Alerts stored from Alertmanager notifications."
    )
    received.add_metric([], session.scalar(select(func.count()).select_from(Alert)) or 0)
    alerts = GaugeMetricFamily("watchkeeper_alerts", "Stored alerts by current status.", labels=["status"])
    for status, count in session.execute(select(Alert.status, func.count()).group_by(Alert.status)):
        alerts.add_metric([status], count)
    incidents = GaugeMetricFamily("watchkeeper_incidents", "Incidents by status.", labels=["status"])
    for status, count in session.execute(select(Incident.status, func.count()).group_by(Incident.status)):
        incidents.add_metric([status], count)
    actions = CounterMetricFamily(
        "watchkeeper_remediation_actions",
        "Remediation decisions, taken or skipped.",
        labels=["action", "decision"],
    )
    grouped = select(RemediationAction.action, RemediationAction.decision, func.count()).group_by(
        RemediationAction.action, RemediationAction.decision
    )
    for action, decision, count in session.execute(grouped):
        actions.add_metric([action, decision], count)
    failures = CounterMetricFamily(
        "watchkeeper_remediation_failures", "Remediation actions that failed.", labels=["action"]
    )
    failed = select(RemediationAction.action, func.count()).where(
        RemediationAction.status == ActionStatus.FAILED
    )
    for action, count in session.execute(failed.group_by(RemediationAction.action)):
        failures.add_metric([action], count)
    pending = GaugeMetricFamily(
        "watchkeeper_flow_runs_pending", "Flow runs recorded but not yet started in Prefect."
    )
    owed, oldest = session.execute(
        select(func.count(), func.min(FlowRunOutbox.created_at)).where(FlowRunOutbox.state == "pending")
    ).one()
    pending.add_metric([], owed)
    age = GaugeMetricFamily(
        "watchkeeper_flow_runs_oldest_pending_age_seconds",
        "How long the oldest flow run the outbox owes has waited to be started in Prefect (0: none).",
    )
    age.add_metric([], max((utcnow() - oldest).total_seconds(), 0.0) if oldest is not None else 0.0)
    live, held = executions.liveness(session)
    executors = GaugeMetricFamily(
        "watchkeeper_executors_live", "Warm executors that heartbeated in the last 30 seconds."
    )
    executors.add_metric([], live)
    executing = GaugeMetricFamily("watchkeeper_executor_runs", "Flow runs the live executors are executing.")
    executing.add_metric([], held)
    return [received, alerts, incidents, actions, failures, pending, age, executors, executing]


class StoreCollector(Collector):
    def __init__(
        self,
        store: Store,
        config: WatchkeeperConfig | None = None,
        profiles: ReferenceProfiles | None = None,
        exemplars: LatencyExemplars | None = None,
    ) -> None:
        self.store, self.config, self.profiles = store, config, profiles
        self.bounds_for = histogram_bounds(config) if config is not None else no_bounds
        self.exemplars = exemplars
        self.datasets = (
            {d.name: (d.model or "", d.pipeline or "") for d in config.datasets} if config is not None else {}
        )
        self._evaluations: tuple[tuple[Any, ...], list[Metric]] | None = None
        self._references: tuple[list[ReferenceProfile], list[GaugeMetricFamily]] = ([], [])
        self._configured = (
            [*threshold_families(config), *feature_store_families(config)] if config is not None else []
        )

    def _reference_families(self, profiles: ReferenceProfiles) -> list[GaugeMetricFamily]:
        """Rebuilt only when a reference was derived again (the families keep their identity
        between scrapes, so `Exposition` sends them as rendered before)."""
        loaded = profiles.loaded()
        cached, families = self._references
        if len(cached) != len(loaded) or any(a is not b for a, b in zip(cached, loaded, strict=True)):
            families = reference_families(loaded)
            self._references = (loaded, families)
        return families

    def _evaluation_families(self, session: Session) -> list[Metric]:
        """The latest windows' gauges and timestamps, rebuilt only when a window was written: they
        change once a collection cycle, and Prometheus (and every dashboard) scrapes more often."""
        written = tuple(session.execute(select(func.count(), func.max(LatestWindow.computed_at))).one())
        if self._evaluations is None or self._evaluations[0] != written:
            self._evaluations = (
                written,
                [
                    *gauge_families(latest_results(session)),
                    evaluation_freshness(evaluation_timestamps(session)),
                ],
            )
        return self._evaluations[1]

    def collect(self) -> Iterator[Metric]:
        with self.store.reading() as session:
            tallies = tally_totals(session)
            evaluations = self._evaluation_families(session)
            operations = operations_families(session)
        totals = intake_counts(tallies)
        exemplar_of = self.exemplars.of if self.exemplars is not None else no_exemplars
        histograms = histogram_families(tallies, self.bounds_for, exemplar_of)
        counters = {
            kind: CounterMetricFamily(name, doc, labels=["model_name", "model_version"])
            for kind, (name, doc) in INTAKE_FAMILIES.items()
        }
        for row in totals:
            if row.kind in counters:
                counters[row.kind].add_metric([row.model_name, row.model_version], row.total)
        yield from counters.values()
        yield from tally_families(tallies, self.datasets)
        if self.profiles is not None:
            yield from self._reference_families(self.profiles)
        yield from self._configured
        yield from histograms
        yield from evaluations
        yield from operations


def store_registry(
    store: Store,
    config: WatchkeeperConfig | None = None,
    profiles: ReferenceProfiles | None = None,
    exemplars: LatencyExemplars | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, config, profiles, exemplars))
    return registry


class Union(Collector):
    """Every metric of several registries, for one exposition (OpenMetrics ends with one `# EOF`)."""

    def __init__(self, *registries: CollectorRegistry) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Metric]:
        for registry in self.registries:
            yield from registry.collect()


class _OneFamily:
    """A registry of one family, as the encoders take it."""

    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family


class Exposition:
    """One registry rendered in the format the scraper asks for (`choose_encoder`), where a family
    that is the very object the previous scrape rendered is sent as rendered then. The evaluation
    results' families are rebuilt only when a window is written (`StoreCollector`), the references'
    and the configuration's when they change: at fifty models they are 7,500 of 9,300 series, a
    scrape took 0.4 to 0.8 s under load, and Prometheus scrapes every 5 s."""

    OPENMETRICS_END = b"# EOF\n"

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._rendered: dict[tuple[int, str], tuple[Metric, bytes]] = {}

    def __call__(self, accept: str | None) -> tuple[bytes, str]:
        encode, content_type = choose_encoder(accept or "")
        openmetrics = content_type.startswith("application/openmetrics-text")
        rendered: dict[tuple[int, str], tuple[Metric, bytes]] = {}
        parts = []
        for family in self.registry.collect():
            key = (id(family), content_type)
            found = self._rendered.get(key)
            if found is None or found[0] is not family:
                text = encode(_OneFamily(family))  # type: ignore[arg-type]
                found = (family, text.removesuffix(self.OPENMETRICS_END) if openmetrics else text)
            rendered[key] = found
            parts.append(found[1])
        self._rendered = rendered  # only what this scrape sent stays cached
        if openmetrics:
            parts.append(self.OPENMETRICS_END)
        return b"".join(parts), content_type


def union_registry(*registries: CollectorRegistry) -> CollectorRegistry:
    union = CollectorRegistry(auto_describe=False)
    union.register(Union(*registries))
    return union
