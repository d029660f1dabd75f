"""A model version's metrics from the sums of a window's buckets (`watchkeeper.intake.aggregates`).

Plain logic over totals: a window of a model serving 10,000 predictions a second costs what one of
a model serving one does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from tasks.estimation import Calibration, estimate_confusion
from tasks.kind_quality import (
    confusion_cells,
    multiclass_scores,
    ranking_quality,
    regression_scores,
    sketch_drift,
)
from tasks.measurements import Measurement, Window, scores
from tasks.references import ModelReference
from tasks.segments import MIN_SEGMENT_LABELS
from watchkeeper.config import MISSING_SEGMENT, OTHER_SEGMENT, Model, Segment
from watchkeeper.intake.aggregates import (
    AWAITING,
    AWAITING_CLASSES,
    AWAITING_LOSS,
    CLASS,
    ERROR_SKETCH,
    ERRORS,
    ERRORS_OF_LABELLED,
    LABEL_SKETCH,
    LATENCY,
    OUTCOME,
    RANKING_OF_LABELLED,
    REQUESTS,
    SEGMENT_CLASS,
    SEGMENT_ERRORS,
    SEGMENT_OUTCOME,
    SEGMENT_RANKING,
    SEGMENT_REQUESTS,
    SEGMENT_SERVED,
    VALUE,
    ZERO_LATENCY,
    latency_at,
    parts,
)
from watchkeeper.intake.checks import class_name
from watchkeeper.intake.class_estimation import expected_cells
from watchkeeper.intake.kinds import BINARY, MULTICLASS, RANKING, REGRESSION, earns_business_value


def _latency_order(index: str) -> float:
    return -float("inf") if index == ZERO_LATENCY else float(index)


@dataclass(frozen=True)
class VersionTotals:
    """measure -> detail -> total, for one model version over one window."""

    totals: Mapping[str, Counter[str]] = field(default_factory=dict)

    def measure(self, name: str) -> Counter[str]:
        return self.totals.get(name, Counter())

    def total(self, name: str) -> float:
        return float(sum(self.measure(name).values()))

    @property
    def requests(self) -> float:
        return self.total(REQUESTS)

    @property
    def served(self) -> float:
        return self.requests - self.total(ERRORS)

    @property
    def labelled(self) -> float:
        """Labelled served predictions: a classifier's outcomes, a regression model's error count, a
        ranking model's requests with feedback."""
        return (
            self.total(OUTCOME)
            + self.measure(ERRORS_OF_LABELLED)["n"]
            + self.measure(RANKING_OF_LABELLED)["n"]
        )

    def latency_quantile(self, q: float) -> float | None:
        """The sketch's q-quantile (rank q * (n - 1), as pandas' default), within 1 % of the true one."""
        sketch = self.measure(LATENCY)
        count = sum(sketch.values())
        if count <= 0:
            return None
        rank, seen = q * (count - 1), 0.0
        for index in sorted(sketch, key=_latency_order):
            seen += sketch[index]
            if seen > rank:
                return latency_at(index)
        return latency_at(max(sketch, key=_latency_order))

    def confusion(self, positive_class: object) -> tuple[float, float, float, float]:
        """(tp, fp, tn, fn) of the labelled served predictions."""
        positive = class_name(positive_class)
        tp = fp = tn = fn = 0.0
        for text, n in self.measure(OUTCOME).items():
            predicted, actual = parts(text)
            if predicted == positive:
                tp, fp = (tp + n, fp) if actual == positive else (tp, fp + n)
            else:
                fn, tn = (fn + n, tn) if actual == positive else (fn, tn + n)
        return tp, fp, tn, fn


def merged(parts: list[VersionTotals]) -> VersionTotals:
    """The totals of several versions or buckets together."""
    found: dict[str, Counter[str]] = {}
    for part in parts:
        for measure, details in part.totals.items():
            found.setdefault(measure, Counter()).update(details)
    return VersionTotals(found)


def traffic_metrics(totals: VersionTotals, window: Window) -> list[Measurement]:
    """Request count, throughput, error rate, latency quantiles and the prediction mix."""
    requests = totals.requests
    measurements = [
        Measurement("request_count", requests),
        Measurement("throughput_rps", requests / window.seconds),
        Measurement("error_rate", totals.total(ERRORS) / requests if requests else 0.0),
    ]
    p50, p95 = totals.latency_quantile(0.5), totals.latency_quantile(0.95)
    if p50 is not None and p95 is not None:
        measurements += [Measurement("latency_p50_seconds", p50), Measurement("latency_p95_seconds", p95)]
    classes = totals.measure(CLASS)
    served = sum(classes.values())
    for predicted_class, n in sorted(classes.items()):
        if n > 0:
            measurements.append(
                Measurement("prediction_share", n / served, {"prediction_class": predicted_class})
            )
    return measurements


def label_coverage(totals: VersionTotals) -> float:
    return totals.labelled / totals.served if totals.served > 0 else 0.0


def quality_metrics(totals: VersionTotals, model: Model, min_coverage: float) -> list[Measurement]:
    """Label coverage, and the scores of the served predictions that have a label, by the model's
    task: a binary model's confusion counts and the positive class's scores, a multiclass model's
    per-class and averaged scores, a regression model's errors (`tasks/kind_quality.py`).

    Below `min_coverage` only the coverage is reported: quality measured on the few labels that
    arrived first would be biased toward whatever gets labelled fastest.
    """
    coverage = label_coverage(totals)
    measurements = [Measurement("label_coverage_ratio", coverage)]
    if coverage < min_coverage or totals.labelled <= 0:
        return measurements
    if model.task == MULTICLASS:
        return [*measurements, *multiclass_scores(confusion_cells(totals.measure(OUTCOME)))]
    if model.task == REGRESSION:
        return [
            *measurements,
            *regression_scores(totals.measure(ERRORS_OF_LABELLED), totals.measure(ERROR_SKETCH)),
        ]
    if model.task == RANKING:
        return [*measurements, *ranking_quality(totals.measure(RANKING_OF_LABELLED), model.ranking.k)]
    tp, fp, tn, fn = totals.confusion(model.positive_class)
    return [
        *measurements,
        Measurement("true_positives", tp),
        Measurement("false_positives", fp),
        Measurement("true_negatives", tn),
        Measurement("false_negatives", fn),
        *(Measurement(name, value) for name, value in scores(tp, fp, tn, fn).items()),
        Measurement("false_positive_rate", fp / (fp + tn) if fp + tn else 0.0),
    ]


def business_value(totals: VersionTotals, model: Model) -> float:
    """The business value the model earned on its labelled predictions (`earns_business_value`)."""
    values = totals.measure(VALUE)
    if model.task in (REGRESSION, RANKING):
        return float(sum(values.values()))
    return float(sum(n for text, n in values.items() if earns_business_value(model, *parts(text))))


def business_metrics(totals: VersionTotals, model: Model, min_coverage: float = 0.0) -> list[Measurement]:
    """The business value of correct positive decisions among labelled predictions (e.g. fraud
    caught; any correct decision of a multiclass model, every labelled regression prediction).

    Not published below `min_coverage`, as quality is not: a window whose labels have not arrived
    yet would read as no value at all and page BusinessImpactCritical.
    """
    if totals.requests <= 0 or label_coverage(totals) < min_coverage:
        return []
    return [
        Measurement("business_impact", business_value(totals, model), {"metric_type": model.business_metric})
    ]


def estimate_unlabelled(
    totals: VersionTotals, calibration: Calibration, positive_class: object, min_rows: int
) -> list[Measurement]:
    """CBPE over the served, scored predictions still without a label, by their score bins."""
    awaiting = [(parts(text), n) for text, n in totals.measure(AWAITING).items() if n > 0]
    rows = sum(n for _, n in awaiting)
    if rows < min_rows:
        return [Measurement("estimated_rows", float(rows))]
    positive = class_name(positive_class)
    probability = calibration.probability(np.array([float(score) for (_, score), _ in awaiting]))
    predicted = np.array([predicted == positive for (predicted, _), _ in awaiting])
    weights = np.array([n for _, n in awaiting], dtype=float)
    estimate = estimate_confusion(probability, predicted, weights)
    return estimate.measurements() if estimate else []


def estimated_loss(totals: VersionTotals, min_rows: int) -> list[Measurement]:
    """A regression model's MAE estimated (DLE, `watchkeeper/intake/loss.py`) for its served
    predictions still without a label, from `min_rows` of them."""
    awaiting = totals.measure(AWAITING_LOSS)
    rows = awaiting["n"]
    if rows <= 0:
        return []
    if rows < min_rows:
        return [Measurement("estimated_rows", float(rows))]
    return [Measurement("estimated_rows", float(rows)), Measurement("estimated_mae", awaiting["abs"] / rows)]


def regression_drift(totals: VersionTotals, reference: ModelReference) -> list[Measurement]:
    """How far a regression model's labels (the target) and residuals of the window moved from the
    reference's (`kind_quality.sketch_drift`), from its labelled predictions' sketches."""
    found = []
    for name, measure, values in (
        ("target_drift", LABEL_SKETCH, reference.targets),
        ("residual_drift", ERROR_SKETCH, reference.residuals),
    ):
        score = sketch_drift(totals.measure(measure), values)
        if score is not None:
            found.append(Measurement(name, score))
    return found


ROUNDING = 1e-6  # what sums of probabilities added and taken out again leave behind


def estimated_classes(totals: VersionTotals, min_rows: int) -> list[Measurement]:
    """A multiclass model's accuracy and macro F1 estimated (CBPE one class against the rest,
    `watchkeeper/intake/class_estimation.py`) for its scored predictions still without a label,
    from `min_rows` of them."""
    cells = {
        tuple(parts(text)): amount
        for text, amount in totals.measure(AWAITING_CLASSES).items()
        if amount > ROUNDING
    }
    rows = sum(cells.values())
    if rows <= ROUNDING:
        return []
    found = [Measurement("estimated_rows", float(round(rows)))]
    if rows < min_rows:
        return found
    estimate = expected_cells(cells)  # type: ignore[arg-type]
    return found + [Measurement(f"estimated_{name}", value) for name, value in estimate.items()]


def positive_rates(totals: VersionTotals, model: Model, reference_rate: float | None) -> list[Measurement]:
    """The model's share of positive predictions and the reference's: the segments' rules compare a
    segment's shift with the whole model's, so a whole-model shift is not paged once per segment."""
    classes = totals.measure(CLASS)
    served = sum(classes.values())
    found: list[Measurement] = []
    if model.task != BINARY:
        return found
    if served > 0:
        found.append(
            Measurement("positive_rate", classes.get(class_name(model.positive_class), 0.0) / served)
        )
    if reference_rate is not None:
        found.append(Measurement("reference_positive_rate", reference_rate))
    return found


@dataclass
class _SegmentCounts:
    requests: float = 0.0
    served: float = 0.0
    positive: float = 0.0
    labelled: float = 0.0
    right: float = 0.0
    absolute_error: float = 0.0
    ndcg: float = 0.0


def _top_values(requests: Counter[str], column: str, at_most: int) -> list[str]:
    """The `at_most` values with the most traffic in the window (ties by name, so the choice is stable)."""
    counts = Counter(
        {value: n for (col, value), n in ((parts(t), n) for t, n in requests.items()) if col == column}
    )
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [name for name, _ in ranked if name != MISSING_SEGMENT][:at_most]


def _is_right(model: Model, predicted: str, actual: str) -> bool:
    """A binary model is right when it puts the label on the right side of its positive class."""
    if model.task == BINARY:
        positive = class_name(model.positive_class)
        return (predicted == positive) == (actual == positive)
    return predicted == actual


def _segment_counts(
    totals: VersionTotals, column: str, values: set[str], model: Model
) -> dict[str, _SegmentCounts]:
    counts: dict[str, _SegmentCounts] = {}

    def of(value: str) -> _SegmentCounts:
        return counts.setdefault(value if value in values else OTHER_SEGMENT, _SegmentCounts())

    positive = class_name(model.positive_class)
    for text, n in totals.measure(SEGMENT_REQUESTS).items():
        col, value = parts(text)
        if col == column:
            of(value).requests += n
    for text, n in totals.measure(SEGMENT_CLASS).items():
        col, value, predicted = parts(text)
        if col == column:
            of(value).served += n
            of(value).positive += n if predicted == positive else 0.0
    for text, n in totals.measure(SEGMENT_SERVED).items():
        col, value = parts(text)
        if col == column:
            of(value).served += n
    for text, n in totals.measure(SEGMENT_OUTCOME).items():
        col, value, predicted, actual = parts(text)
        if col == column:
            of(value).labelled += n
            of(value).right += n if _is_right(model, predicted, actual) else 0.0
    for text, n in totals.measure(SEGMENT_RANKING).items():
        col, value, stat = parts(text)
        if col == column and stat == "n":
            of(value).labelled += n
        elif col == column:
            of(value).ndcg += n
    for text, n in totals.measure(SEGMENT_ERRORS).items():
        col, value, stat = parts(text)
        if col == column and stat == "n":
            of(value).labelled += n
        elif col == column and stat == "abs":
            of(value).absolute_error += n
    return counts


def segment_metrics(
    totals: VersionTotals,
    segment: Segment,
    kept: list[str] | None,
    model: Model,
    window_seconds: float,
    reference_rates: Mapping[tuple[str, str], float],
) -> list[Measurement]:
    """Traffic, label coverage and (with enough labels) quality per segment value: accuracy for a
    classifier, MAE for a regression model, NDCG at the first k for a ranking model; a binary
    model's positive rate too.

    Each column keeps labels of its own for at most `max_values` values (the reference's most
    frequent, else the window's); every other value is `_other_`.
    """
    requests = totals.measure(SEGMENT_REQUESTS)
    values = set(kept if kept is not None else _top_values(requests, segment.column, segment.max_values))
    values.add(MISSING_SEGMENT)
    measurements = []
    for name, row in sorted(_segment_counts(totals, segment.column, values, model).items()):
        if row.requests <= 0:
            continue
        labels = {"segment_column": segment.column, "segment": name}
        measurements += [
            Measurement("segment_request_count", row.requests, labels),
            Measurement("segment_throughput_rps", row.requests / window_seconds, labels),
            Measurement("segment_labelled", row.labelled, labels),
        ]
        if row.served > 0:
            if model.task == BINARY:
                measurements.append(Measurement("segment_positive_rate", row.positive / row.served, labels))
            measurements.append(
                Measurement("segment_label_coverage_ratio", row.labelled / row.served, labels)
            )
        reference_rate = reference_rates.get((segment.column, name))
        if reference_rate is not None and model.task == BINARY:
            measurements.append(Measurement("segment_reference_positive_rate", reference_rate, labels))
        coverage = row.labelled / row.served if row.served > 0 else 0.0
        if row.labelled >= MIN_SEGMENT_LABELS and coverage >= model.thresholds.min_label_coverage:
            if model.task == REGRESSION:
                measurements.append(Measurement("segment_mae", row.absolute_error / row.labelled, labels))
            elif model.task == RANKING:
                measurements.append(Measurement("segment_ndcg", row.ndcg / row.labelled, labels))
            else:
                measurements.append(Measurement("segment_accuracy", row.right / row.labelled, labels))
    return measurements
