"""Data quality's fast path: cheap checks of each prediction record against its model's reference.

The scheduled Evidently flow judges windows of data every few minutes; these checks run in the
intake, on every stored record, so a broken feature pipeline shows in the next scrape. Each
record counts once under `records_checked` and once per failed (check, column):

- `missing_column`: a configured feature absent from the record;
- `unexpected_column`: a feature that is not configured (all under one column label, so a
  sender cannot create label values);
- `null`: a configured feature sent as null (the rule subtracts the reference's own null share);
- `type_mismatch`: a numerical feature that is not a number, a text feature that is not a string;
- `out_of_range`: a number outside the reference's [min, max];
- `unseen_category`: a categorical value the reference never had.

Without a reference only the structural checks run (missing, unexpected, null, type).
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import pandas as pd

from watchkeeper.config import Model, WatchkeeperConfig
from watchkeeper.intake.bodies import CONTAINERS

LOG = logging.getLogger(__name__)
UNEXPECTED_COLUMN = "_unexpected_"
OTHER_CLASS = "_other_"
MAX_REFERENCE_CLASSES = 20
FREE_FORM = ("text", "embedding")  # features without a range or a set of categories
_ABSENT = object()
_PLAIN_CATEGORIES = (str, int)  # whose `class_name` is `str(value)`
PLAIN_NUMBERS = (float, int)  # exactly these types: a bool is an int, and not a number here
T = TypeVar("T")


def class_name(value: object) -> str:
    """One spelling per class: labels that went through a float column (1.0) match predictions (1)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_null(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class ColumnProfile:
    type: str
    null_share: float = 0.0
    low: float = -math.inf
    high: float = math.inf
    categories: frozenset[str] | None = None


@dataclass(frozen=True)
class ReferenceProfile:
    """What a model's records are checked against, and the labels their counts go under."""

    model: str
    dataset: str
    pipeline: str
    columns: dict[str, ColumnProfile]
    class_shares: dict[str, float] = field(default_factory=dict)
    loss: Any = None  # a regression model's `loss.LossModel`: its expected error before labels
    classes: Any = None  # a multiclass model's `class_estimation.ClassCalibration`

    def prediction_class(self, prediction: Any) -> str:
        """The class label a prediction is counted under: bounded by the reference's classes."""
        name = class_name(prediction)
        return name if name in self.class_shares else OTHER_CLASS


def dataset_of(config: WatchkeeperConfig, model: str) -> tuple[str, str]:
    """The (dataset, pipeline) a model's records belong to; the model's own name when none is configured."""
    datasets = config.datasets_of(model)
    return (datasets[0].name, datasets[0].pipeline or "") if datasets else (model, "")


def _column_profile(kind: str, reference: pd.Series | None) -> ColumnProfile:
    if reference is None or reference.empty:
        return ColumnProfile(kind)
    known = reference.dropna()
    null_share = 1.0 - len(known) / len(reference)
    if kind in FREE_FORM:
        return ColumnProfile(kind, null_share)
    if kind == "numerical":
        numbers_only = pd.to_numeric(known, errors="coerce").dropna()
        if numbers_only.empty:
            return ColumnProfile(kind, null_share)
        return ColumnProfile(kind, null_share, float(numbers_only.min()), float(numbers_only.max()))
    return ColumnProfile(kind, null_share, categories=frozenset(known.map(class_name)))


def profile(config: WatchkeeperConfig, model: Model, reference: pd.DataFrame) -> ReferenceProfile:
    dataset, pipeline = dataset_of(config, model.name)
    columns = {f.name: _column_profile(f.type, reference.get(f.name)) for f in model.features}
    shares: dict[str, float] = {}
    if model.prediction_column in reference and not reference.empty:
        counts = reference[model.prediction_column].dropna().map(class_name).value_counts(normalize=True)
        if len(counts) <= MAX_REFERENCE_CLASSES:
            shares = {str(k): float(v) for k, v in counts.items()}
    loss = calibration = None
    if model.task == "regression":
        from watchkeeper.intake.loss import fit_loss_model  # noqa: PLC0415 - loss imports this module

        loss = fit_loss_model(model, reference)
    if model.task == "multiclass":
        from watchkeeper.intake.class_estimation import fit_class_calibration  # noqa: PLC0415 - as loss

        calibration = fit_class_calibration(model, reference)
    return ReferenceProfile(model.name, dataset, pipeline, columns, shares, loss, calibration)


def _value_failure(spec: ColumnProfile, value: Any) -> str | None:
    """What a value that `record_failures` did not pass at once fails, if anything."""
    if is_null(value):
        return "null"
    if spec.type == "numerical":
        if not is_number(value):
            return "type_mismatch"
        return "out_of_range" if not spec.low <= value <= spec.high else None
    if spec.type == "text":
        return None if isinstance(value, str) else "type_mismatch"
    if spec.type == "embedding":
        return None  # its shape was checked when its batch was parsed (`kinds.embedding_problem`)
    if isinstance(value, CONTAINERS):
        return "type_mismatch"
    if spec.categories is not None and class_name(value) not in spec.categories:
        return "unseen_category"
    return None


def record_failures(profile: ReferenceProfile, features: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (check, column) pairs one record fails."""
    failures: list[tuple[str, str]] = []
    present = 0
    for name, spec in profile.columns.items():
        value = features.get(name, _ABSENT)
        if value is _ABSENT:
            failures.append(("missing_column", name))
            continue
        present += 1
        # Most values: a number in its range, checked here without a call (once a feature and record).
        if spec.type == "numerical" and type(value) in PLAIN_NUMBERS and spec.low <= value <= spec.high:
            continue
        if spec.categories is not None and type(value) in _PLAIN_CATEGORIES and str(value) in spec.categories:
            continue
        failure = _value_failure(spec, value)
        if failure is not None:
            failures.append((failure, name))
    if len(features) > present:  # a feature the reference does not have
        failures.append(("unexpected_column", UNEXPECTED_COLUMN))
    return failures


class ReferenceCache(Generic[T]):
    """What is derived from each configured model's reference (a profile, a calibration), cached.

    Derived on first use, again when a file reference changes on disk, and at most every `ttl`
    seconds otherwise (SQL and period references). A reference that cannot be read or is empty
    derives nothing (None), and is retried after `ttl`.
    """

    def __init__(
        self,
        config: WatchkeeperConfig,
        load: Callable[[Model], pd.DataFrame],
        derive: Callable[[Model, pd.DataFrame], T | None],
        ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config, self.load, self.derive, self.ttl, self.clock = config, load, derive, ttl, clock
        self.models = {m.name: m for m in config.models}
        self._cached: dict[str, tuple[float, float | None, T | None]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _file_stamp(model: Model) -> float | None:
        path = getattr(model.reference, "path", None)
        if path is None:
            return None
        try:
            return path.stat().st_mtime
        except OSError:
            return -1.0

    def __call__(self, model_name: str) -> T | None:
        model = self.models.get(model_name)
        if model is None or model.reference is None:
            return None
        stamp = self._file_stamp(model)
        with self._lock:
            cached = self._cached.get(model_name)
            if cached is not None and cached[1] == stamp and self.clock() - cached[0] < self.ttl:
                return cached[2]
            try:
                frame = self.load(model)
            except Exception as exc:  # noqa: BLE001 - a bad reference must not fail its users
                LOG.warning("reference of %s not readable: %s", model_name, exc)
                frame = pd.DataFrame()
            found = self.derive(model, frame) if not frame.empty else None
            self._cached[model_name] = (self.clock(), stamp, found)
            return found

    def loaded(self) -> list[T]:
        """What was derived so far (for `/metrics`, which must not read files on a scrape)."""
        with self._lock:
            return [p for _, _, p in self._cached.values() if p is not None]


class ReferenceProfiles(ReferenceCache[ReferenceProfile]):
    """Each configured model's reference profile, for the intake and `/metrics`."""

    def __init__(
        self,
        config: WatchkeeperConfig,
        load: Callable[[Model], pd.DataFrame],
        ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, load, partial(profile, config), ttl, clock)
