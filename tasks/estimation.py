"""Performance before labels arrive: confidence-based performance estimation (CBPE).

The method is NannyML's (https://nannyml.readthedocs.io/en/stable/how_it_works/performance_estimation.html),
built here on scikit-learn. A classifier's score is calibrated into a probability that the
prediction's class is positive, on a labelled reference the classifier was not trained on (the
model's configured reference, fixed before the period it estimates). For each served prediction
without a label, a calibrated probability p is an expected share of one confusion cell:

    predicted positive: E[TP] += p,  E[FP] += 1 - p
    predicted negative: E[FN] += p,  E[TN] += 1 - p

and precision, recall, F1 and accuracy follow from the expected matrix. Accuracy's standard error
is that of a sum of independent Bernoulli outcomes, sqrt(sum q(1 - q)) / n with q the probability
that each prediction is right.

CBPE assumes the relation between features and label holds (covariate shift only). Under concept
drift the calibration is wrong and the estimate keeps the reference's quality: that is what
`benchmarks/estimation.py` measures, and why the realised figures still decide the accuracy alerts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from tasks.measurements import Measurement, is_positive, scores

MIN_REFERENCE_ROWS = 100  # fewer labelled reference rows calibrate nothing worth exporting


@dataclass(frozen=True)
class Calibration:
    """Score -> probability that the label is positive, fitted on a labelled reference."""

    isotonic: IsotonicRegression
    rows: int

    def probability(self, scores: np.ndarray) -> np.ndarray:
        if len(scores) == 0:
            return np.array([], dtype=float)
        return np.clip(self.isotonic.predict(scores.astype(float)), 0.0, 1.0)


def fit_calibration(
    reference: pd.DataFrame, score_column: str, label_column: str, positive_class: object
) -> Calibration | None:
    """Isotonic calibration of the reference's scores against its labels; None when the reference
    has no scores or labels, or too few rows, or a single class."""
    if score_column not in reference or label_column not in reference:
        return None
    usable = reference[[score_column, label_column]].dropna()
    scores = pd.to_numeric(usable[score_column], errors="coerce")
    usable = usable[scores.notna()]
    if len(usable) < MIN_REFERENCE_ROWS:
        return None
    positive = is_positive(usable[label_column], positive_class).to_numpy(dtype=float)
    if positive.min() == positive.max():
        return None
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    isotonic.fit(scores[scores.notna()].to_numpy(dtype=float), positive)
    return Calibration(isotonic, len(usable))


@dataclass(frozen=True)
class Estimate:
    rows: int
    true_positives: float
    false_positives: float
    true_negatives: float
    false_negatives: float
    accuracy_standard_error: float

    def scores(self) -> dict[str, float]:
        """Accuracy, precision, recall and F1 of the expected confusion matrix."""
        return scores(self.true_positives, self.false_positives, self.true_negatives, self.false_negatives)

    def measurements(self) -> list[Measurement]:
        return [
            Measurement("estimated_rows", float(self.rows)),
            *(Measurement(f"estimated_{name}", value) for name, value in self.scores().items()),
            Measurement("estimated_accuracy_standard_error", self.accuracy_standard_error),
        ]


def estimate_confusion(
    probability: np.ndarray, predicted_positive: np.ndarray, weights: np.ndarray | None = None
) -> Estimate | None:
    """The expected confusion matrix of predictions whose positive-label probability is known;
    `weights` counts how many predictions each entry stands for (a score bin's), one by default."""
    n = np.ones(len(probability)) if weights is None else weights.astype(float)
    rows = float(n.sum())
    if rows <= 0:
        return None
    p = probability.astype(float)
    predicted = predicted_positive.astype(bool)
    right = np.where(predicted, p, 1.0 - p)
    return Estimate(
        rows=round(rows),
        true_positives=float((n * p)[predicted].sum()),
        false_positives=float((n * (1.0 - p))[predicted].sum()),
        true_negatives=float((n * (1.0 - p))[~predicted].sum()),
        false_negatives=float((n * p)[~predicted].sum()),
        accuracy_standard_error=math.sqrt(float((n * right * (1.0 - right)).sum())) / rows,
    )
