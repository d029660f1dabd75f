"""A monitoring flow's numbers: what was measured, over which window. Plain data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from watchkeeper.record_checks import class_name


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

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def is_positive(column: pd.Series, positive_class: object) -> pd.Series:
    return column.map(class_name) == class_name(positive_class)
