"""What the collection flow derives from each model's reference, fitted once per reference version:
the score calibration of performance estimation, and the segment values that keep labels."""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd

from tasks.estimation import Calibration, fit_calibration
from tasks.logs import reference_frame
from tasks.measurements import is_positive
from tasks.segments import reference_positive_rates, reference_segments
from watchkeeper.config import Model, WatchkeeperConfig
from watchkeeper.intake.checks import ReferenceCache, ReferenceProfiles
from watchkeeper.intake.kinds import BINARY, RANKING, REGRESSION, item_key
from watchkeeper.store import Store
from watchkeeper.store.samples import Sampling


@dataclass(frozen=True)
class ModelReference:
    calibration: Calibration | None
    segment_values: dict[str, list[str]] = field(default_factory=dict)
    segment_positive_rates: dict[tuple[str, str], float] = field(default_factory=dict)
    positive_rate: float | None = None
    item_counts: Counter[str] = field(default_factory=Counter)  # a ranking model's, by `item_key`
    # A regression model's labelled reference: its labels and residuals (prediction - label).
    targets: np.ndarray = field(default_factory=lambda: np.empty(0))
    residuals: np.ndarray = field(default_factory=lambda: np.empty(0))


def derive(model: Model, reference: pd.DataFrame) -> ModelReference:
    """Segment values for every task; the calibration and positive rates of a binary model."""
    kept = reference_segments(model, reference)
    if model.task == RANKING:
        return ModelReference(
            calibration=None, segment_values=kept, item_counts=recommended_items(model, reference)
        )
    if model.task == REGRESSION:
        targets, residuals = regression_values(model, reference)
        return ModelReference(calibration=None, segment_values=kept, targets=targets, residuals=residuals)
    if model.task != BINARY:
        return ModelReference(calibration=None, segment_values=kept)
    return ModelReference(
        calibration=fit_calibration(reference, model.score_column, model.label_column, model.positive_class),
        segment_values=kept,
        segment_positive_rates=reference_positive_rates(model, reference, kept),
        positive_rate=(
            float(is_positive(reference[model.prediction_column], model.positive_class).mean())
            if model.prediction_column in reference
            else None
        ),
    )


def regression_values(model: Model, reference: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The reference's labels and residuals (prediction - label), over its rows holding both as
    numbers; empty without them."""
    if model.label_column not in reference or model.prediction_column not in reference:
        return np.empty(0), np.empty(0)
    labels = pd.to_numeric(reference[model.label_column], errors="coerce")
    predictions = pd.to_numeric(reference[model.prediction_column], errors="coerce")
    both = labels.notna() & predictions.notna()
    targets = labels[both].to_numpy(dtype=float)
    return targets, predictions[both].to_numpy(dtype=float) - targets


def recommended_items(model: Model, reference: pd.DataFrame) -> Counter[str]:
    """How often each item is in the first max(k) places of the reference's ranked lists (a list,
    an object with `items`, or either as JSON text, as a CSV holds them)."""
    counts: Counter[str] = Counter()
    if model.prediction_column not in reference:
        return counts
    shown = max(model.ranking.k)
    for value in reference[model.prediction_column].dropna():
        ranked = json.loads(value) if isinstance(value, str) else value
        items = ranked.get("items", []) if isinstance(ranked, dict) else ranked
        counts.update(item_key(item) for item in list(items)[:shown])
    return counts


_lock = threading.Lock()
_caches: dict[tuple[int, int], tuple[WatchkeeperConfig, Store, ReferenceCache[ModelReference]]] = {}
_profiles: dict[tuple[int, int], tuple[WatchkeeperConfig, Store, ReferenceProfiles]] = {}


def reference_profiles(store: Store, config: WatchkeeperConfig) -> ReferenceProfiles:
    """The models' reference profiles, as the intake has them, cached as long as the process."""
    key = (id(config), id(store))
    with _lock:
        cached = _profiles.get(key)
        if cached is None:
            _profiles.clear()
            cached = _profiles[key] = (
                config,
                store,
                ReferenceProfiles(config, partial(reference_frame, store, sampling=Sampling.of(config))),
            )
    return cached[2]


def model_reference(store: Store, config: WatchkeeperConfig, model: Model) -> ModelReference | None:
    """The model's derived reference, from a cache that lives as long as the process (the warm
    executor's), so a collection every 15 s reads and fits the reference only when it changes."""
    key = (id(config), id(store))
    with _lock:
        cached = _caches.get(key)
        if cached is None:
            _caches.clear()  # a new configuration or store: the old derivations are stale
            load = partial(reference_frame, store, sampling=Sampling.of(config))
            derived = ReferenceCache(config, load, derive)
            cached = _caches[key] = (config, store, derived)
    return cached[2](model.name)
