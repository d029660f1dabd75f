"""Drift of an embedding feature, judged as a whole vector.

The verdict is one of Evidently's embedding drift methods (`models[].features[].drift_method`):

- `model` (the default, as Evidently's): a classifier learns to tell current vectors from
  reference ones; its ROC AUC on held-out rows is the score (0.5: indistinguishable), drifted
  above the threshold (Evidently's 0.55) when that AUC is also unlikely by chance: below 1,000
  vectors a side, chance alone passes 0.55 in about one window in twenty (Evidently's bootstrap
  for small references takes chance's 95th percentile, the same one in twenty). The held-out AUC
  of a classifier trained on other rows is a Mann-Whitney statistic under no drift, so its
  p-value is exact enough by the normal approximation, and it must be below the model's
  `drift_p_value`, as every p-value test Watchkeeper repeats each evaluation;
- `mmd`: the maximum mean discrepancy (an RBF kernel), drifted above 0.015;
- `distance`: the Euclidean distance between the centroids, drifted above 0.2;
- `ratio`: the share of components whose Wasserstein distance passes 0.1, drifted above 0.2.

Evidently's `EmbeddingsDrift` metric would also draw a t-SNE map of both samples, seconds of CPU in
the process that runs every flow; the methods are called directly. Whatever the method, the
distance between the current and the reference centroid is reported
(`ai_model_embedding_centroid_distance`, as Arize measures it): it says how far the vectors moved,
in the embedding's own units.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from evidently.legacy.metrics.data_drift.embedding_drift_methods import DriftMethod
from evidently.metrics.embeddings import (
    DistanceDriftMethod,
    MMDDriftMethod,
    ModelDriftMethod,
    RatioDriftMethod,
)
from scipy.stats import norm

from watchkeeper.config import DEFAULT_DRIFT_P_VALUE

DEFAULT_METHOD = "model"
# Vectors per side: MMD's kernel matrix grows with the square of the rows (1,000 a side: 32 MB).
SAMPLE_ROWS = {"mmd": 1000}
DEFAULT_SAMPLE_ROWS = 2000
HELD_OUT = 0.5  # Evidently's classifier is scored on half the rows
SAMPLE_SEED = 20261206


@dataclass(frozen=True)
class EmbeddingDrift:
    feature: str
    method: str
    score: float
    threshold: float
    drifted: bool
    p_value: float | None  # `model`: the chance of an AUC this high with no drift
    centroid_distance: float
    reference_rows: int
    current_rows: int


def _vector(value: object, dim: int) -> np.ndarray | None:
    if isinstance(value, str):  # a CSV reference keeps each vector as its JSON text
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, list | tuple | np.ndarray) or len(value) != dim:
        return None
    vector = np.asarray(value, dtype=float)
    return vector if np.isfinite(vector).all() else None


def vectors(values: pd.Series, dim: int) -> np.ndarray:
    """The rows holding a vector of `dim` finite numbers, as a matrix (the others are left out)."""
    found = [v for v in (_vector(value, dim) for value in values) if v is not None]
    return np.vstack(found) if found else np.empty((0, dim))


def _method(name: str, threshold: float | None) -> DriftMethod:
    methods: dict[str, type[DriftMethod]] = {
        "model": ModelDriftMethod,
        "mmd": MMDDriftMethod,
        "distance": DistanceDriftMethod,
        "ratio": RatioDriftMethod,
    }
    return methods[name]() if threshold is None else methods[name](threshold=threshold)


def auc_p_value(auc: float, reference_rows: int, current_rows: int) -> float:
    """The one-sided chance of a held-out AUC at least this high when both samples come from one
    distribution (Mann-Whitney's normal approximation, on the held-out share of each side)."""
    positives, negatives = reference_rows * HELD_OUT, current_rows * HELD_OUT
    spread = math.sqrt((positives + negatives + 1) / (12 * positives * negatives))
    return float(norm.sf((auc - 0.5) / spread))


def _sample(matrix: np.ndarray, rows: int) -> np.ndarray:
    if len(matrix) <= rows:
        return matrix
    chosen = np.random.default_rng(SAMPLE_SEED).choice(len(matrix), size=rows, replace=False)
    return matrix[np.sort(chosen)]


def embedding_drift(
    feature: str,
    reference: np.ndarray,
    current: np.ndarray,
    method: str | None = None,
    threshold: float | None = None,
    p_value_level: float = DEFAULT_DRIFT_P_VALUE,
) -> EmbeddingDrift:
    """One embedding's drift by `method` (Evidently's), and the distance between its centroids."""
    name = method or DEFAULT_METHOD
    rows = SAMPLE_ROWS.get(name, DEFAULT_SAMPLE_ROWS)
    reference_sample, current_sample = _sample(reference, rows), _sample(current, rows)
    judge = _method(name, threshold)
    score, drifted, _ = judge(pd.DataFrame(current_sample), pd.DataFrame(reference_sample))
    p_value = None
    if name == "model":
        p_value = auc_p_value(float(score), len(reference_sample), len(current_sample))
        drifted = drifted and p_value < p_value_level
    return EmbeddingDrift(
        feature=feature,
        method=name,
        score=float(score),
        threshold=float(judge.threshold),  # type: ignore[attr-defined]
        drifted=bool(drifted),
        p_value=p_value,
        centroid_distance=float(np.linalg.norm(current.mean(axis=0) - reference.mean(axis=0))),
        reference_rows=len(reference),
        current_rows=len(current),
    )
