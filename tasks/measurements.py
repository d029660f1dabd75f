"""A monitoring flow's numbers: what was measured, over which window. Plain data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from watchkeeper.intake.checks import class_name
from watchkeeper.times import as_utc


@dataclass(frozen=True)
class Measurement:
    metric: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] | None = None

    @property
    def labels_key(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", as_utc(self.start))
        object.__setattr__(self, "end", as_utc(self.end))

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def is_positive(column: pd.Series, positive_class: object) -> pd.Series:
    """Which values name the positive class (1, 1.0 and "1" alike); each distinct value's class
    name is computed once."""
    target = class_name(positive_class)
    try:
        names = {value: class_name(value) for value in column.dropna().unique()}
    except TypeError:  # unhashable values (lists from a JSON column): one by one
        return column.map(class_name) == target
    return column.map(names) == target


def scores(tp: float, fp: float, tn: float, fn: float) -> dict[str, float]:
    n = tp + fp + tn + fn
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
    }
