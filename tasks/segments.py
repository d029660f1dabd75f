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

from tasks.measurements import Measurement, is_labelled, is_positive
from watchkeeper.config import MISSING_SEGMENT, OTHER_SEGMENT, Model, Segment
from watchkeeper.intake.checks import class_name

MIN_SEGMENT_LABELS = 30  # a segment's accuracy on fewer labels is noise, not news
MAX_SEGMENT_NAME = 64  # label values stay short whatever a sender puts in the column


def segment_name(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING_SEGMENT
    return class_name(value)[:MAX_SEGMENT_NAME]


def segment_names(values: pd.Series) -> pd.Series:
    """Column values as label values: `_missing_` for absent ones, numbers as their class names,
    at most 64 characters; each distinct value named once."""
    try:
        names = {value: segment_name(value) for value in values.dropna().unique()}
    except TypeError:  # unhashable values (lists from a JSON column): one by one
        return values.map(segment_name)
    return values.map(names).where(values.notna(), MISSING_SEGMENT)


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
    served = ~log["error"]
    labelled = is_labelled(log)
    predicted = is_positive(log["prediction"], model.positive_class)
    counts = (
        pd.DataFrame(
            {
                "requests": 1,
                "served": served,
                "labelled": labelled,
                "positive": served & predicted,
                "right": labelled & (predicted == is_positive(log["label"], model.positive_class)),
            }
        )
        .groupby(bounded(log[segment.column], values).to_numpy())
        .sum()
    )
    measurements = []
    for name, row in counts.iterrows():
        labels = {"segment_column": segment.column, "segment": str(name)}
        measurements += [
            Measurement("segment_request_count", float(row["requests"]), labels),
            Measurement("segment_throughput_rps", row["requests"] / window_seconds, labels),
            Measurement("segment_labelled", float(row["labelled"]), labels),
        ]
        if row["served"]:
            measurements += [
                Measurement("segment_positive_rate", row["positive"] / row["served"], labels),
                Measurement("segment_label_coverage_ratio", row["labelled"] / row["served"], labels),
            ]
        reference_rate = reference_rates.get((segment.column, str(name)))
        if reference_rate is not None:
            measurements.append(Measurement("segment_reference_positive_rate", reference_rate, labels))
        coverage = row["labelled"] / row["served"] if row["served"] else 0.0
        if row["labelled"] >= MIN_SEGMENT_LABELS and coverage >= model.thresholds.min_label_coverage:
            measurements.append(Measurement("segment_accuracy", row["right"] / row["labelled"], labels))
    return measurements
