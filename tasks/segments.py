"""Segment metrics: quality, positive rate and traffic per value of a low-cardinality column.

A model's segments (`models[].segments`, the seed's merchant category) are measured over the
quality window. Each column keeps at most `max_values` values of its own, those with the most
traffic in the reference (in the window when the reference lacks the column); every other value
is `_other_` and a missing one `_missing_`. So a sender cannot create series, and a value's label
stays the same from one window to the next.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from tasks.measurements import Measurement, is_positive
from watchkeeper.config import MISSING_SEGMENT, OTHER_SEGMENT, Model, Segment
from watchkeeper.record_checks import class_name

MIN_SEGMENT_LABELS = 30  # a segment's accuracy on fewer labels is noise, not news
MAX_SEGMENT_NAME = 64  # label values stay short whatever a sender puts in the column


def segment_names(values: pd.Series) -> pd.Series:
    """Raw column values as label values: `_missing_` for absent ones, numbers as their class names."""
    return values.map(
        lambda v: MISSING_SEGMENT if v is None or (isinstance(v, float) and math.isnan(v)) else class_name(v)
    )


def top_values(values: pd.Series, at_most: int) -> list[str]:
    """The `at_most` most frequent values (ties by name, so the choice is stable)."""
    counts = segment_names(values).value_counts()
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [name for name, _ in ranked if name != MISSING_SEGMENT][:at_most]


def bounded(values: pd.Series, kept: list[str]) -> pd.Series:
    names = segment_names(values)
    keep = set(kept) | {MISSING_SEGMENT}
    return names.where(names.isin(keep), OTHER_SEGMENT)


def reference_segments(model: Model, reference: pd.DataFrame) -> dict[str, list[str]]:
    """Per segment column, the values that keep a label of their own, from the reference."""
    return {
        s.column: top_values(reference[s.column], s.max_values)
        for s in model.segments
        if s.column in reference and reference[s.column].notna().any()
    }


def reference_positive_rates(
    model: Model, reference: pd.DataFrame, kept: Mapping[str, list[str]]
) -> dict[tuple[str, str], float]:
    """Each kept segment's share of positive predictions in the reference."""
    if model.prediction_column not in reference:
        return {}
    positive = is_positive(reference[model.prediction_column], model.positive_class)
    rates = {}
    for column, values in kept.items():
        names = bounded(reference[column], values)
        for name, share in positive.groupby(names).mean().items():
            rates[(column, str(name))] = float(share)
    return rates


def segment_metrics(
    log: pd.DataFrame,
    segment: Segment,
    kept: list[str] | None,
    model: Model,
    window_seconds: float,
    reference_rates: Mapping[tuple[str, str], float],
) -> list[Measurement]:
    """Traffic, positive rate, label coverage and (with enough labels) accuracy per segment value.

    `log` holds the window's predictions with the column's raw values in a column of its name.
    """
    if log.empty or segment.column not in log:
        return []
    values = kept if kept is not None else top_values(log[segment.column], segment.max_values)
    names = bounded(log[segment.column], values)
    measurements = []
    for name, part in log.groupby(names):
        labels = {"segment_column": segment.column, "segment": str(name)}
        served = part.loc[~part["error"]]
        labelled = served.loc[served["label"].notna()]
        found = [
            Measurement("segment_request_count", float(len(part)), labels),
            Measurement("segment_throughput_rps", len(part) / window_seconds, labels),
            Measurement("segment_labelled", float(len(labelled)), labels),
        ]
        if len(served):
            positive = is_positive(served["prediction"], model.positive_class)
            found.append(Measurement("segment_positive_rate", float(positive.mean()), labels))
            found.append(Measurement("segment_label_coverage_ratio", len(labelled) / len(served), labels))
        reference_rate = reference_rates.get((segment.column, str(name)))
        if reference_rate is not None:
            found.append(Measurement("segment_reference_positive_rate", reference_rate, labels))
        coverage = len(labelled) / len(served) if len(served) else 0.0
        if len(labelled) >= MIN_SEGMENT_LABELS and coverage >= model.thresholds.min_label_coverage:
            right = is_positive(labelled["prediction"], model.positive_class) == is_positive(
                labelled["label"], model.positive_class
            )
            found.append(Measurement("segment_accuracy", float(right.mean()), labels))
        measurements += found
    return measurements
