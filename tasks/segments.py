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

from tasks.measurements import is_positive
from watchkeeper.config import MISSING_SEGMENT, OTHER_SEGMENT, Model
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
