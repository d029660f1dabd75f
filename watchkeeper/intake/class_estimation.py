"""A multiclass model's quality before its labels arrive: CBPE, one class against the rest.

The method is NannyML's multiclass CBPE
(https://nannyml.readthedocs.io/en/stable/how_it_works/performance_estimation.html), built here on
scikit-learn. A multiclass model sends each prediction's `scores` ({class: probability}). On the
model's labelled reference (its `scores` column, each row's object or its JSON text), each
configured class's score is calibrated, one class against the rest, into the probability that the
label is that class (isotonic regression); a prediction's calibrated probabilities are then scaled
to sum to one. A prediction of class j with probabilities p adds p_c to the expected confusion
cell (j, c) of every class c, so that

    E[TP_c] = sum of p_c over predictions of c,   E[FP_c] = sum of (1 - p_c) over them,
    E[FN_c] = sum of p_c over predictions of other classes,

which is NannyML's one-vs-rest estimate, and the expected accuracy is the share on the diagonal.
The intake adds each prediction's probabilities to the aggregates as it arrives and takes them out
when its label joins (its key row keeps them), so a window's estimate covers the predictions still
without a label, as a binary model's does.

Like every CBPE it assumes the relation between features and label holds: it sees the model grow
less sure, not a world that changed under a confident model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from watchkeeper.config import Model
from watchkeeper.intake.checks import class_name

SCORES_COLUMN = "scores"  # a multiclass reference's per-row {class: probability}
MIN_REFERENCE_ROWS = 100  # as the binary calibration's


@dataclass(frozen=True)
class ClassCalibration:
    """Each configured class's score -> the probability that the label is that class."""

    classes: tuple[str, ...]
    isotonic: tuple[IsotonicRegression | None, ...]  # None: a class the reference never labelled

    def probabilities(self, scores: Sequence[Mapping[str, float]]) -> np.ndarray:
        """One row per prediction, one column per class, scaled to sum to one (a row of zeros
        when no configured class had a score)."""
        raw = np.array([[float(s.get(c, 0.0)) for c in self.classes] for s in scores], dtype=float)
        if raw.size == 0:
            return raw.reshape(len(scores), len(self.classes))
        calibrated = np.column_stack(
            [
                np.zeros(len(raw)) if iso is None else iso.predict(raw[:, i])
                for i, iso in enumerate(self.isotonic)
            ]
        )
        totals = calibrated.sum(axis=1, keepdims=True)
        return np.divide(calibrated, totals, out=np.zeros_like(calibrated), where=totals > 0)


def scores_of(value: Any) -> dict[str, float] | None:
    """A reference row's scores: an object, or its JSON text (a CSV keeps it so)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, Mapping):
        return None
    found = {}
    for key, score in value.items():
        try:
            found[str(key)] = float(score)
        except (TypeError, ValueError):
            return None
    return found


def fit_class_calibration(model: Model, reference: pd.DataFrame) -> ClassCalibration | None:
    """One isotonic calibration per configured class; None without a scored, labelled reference
    of at least MIN_REFERENCE_ROWS rows."""
    if SCORES_COLUMN not in reference or model.label_column not in reference:
        return None
    rows = [
        (scores, class_name(label))
        for scores, label in zip(
            map(scores_of, reference[SCORES_COLUMN]), reference[model.label_column], strict=True
        )
        if scores is not None and label is not None and not pd.isna(label)
    ]
    if len(rows) < MIN_REFERENCE_ROWS:
        return None
    isotonic = []
    for name in model.classes:
        is_class = np.array([label == name for _, label in rows], dtype=float)
        if is_class.min() == is_class.max():
            isotonic.append(None)
            continue
        fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        fitted.fit(np.array([s.get(name, 0.0) for s, _ in rows], dtype=float), is_class)
        isotonic.append(fitted)
    return ClassCalibration(tuple(model.classes), tuple(isotonic))


def expected_cells(cells: Mapping[tuple[str, str], float]) -> dict[str, float]:
    """Accuracy and macro F1 of an expected confusion matrix {(predicted, actual): expected count},
    F1 averaged over the classes predicted or expected, as scikit-learn's over the labels present."""
    rows = sum(cells.values())
    if rows <= 0:
        return {}
    classes = sorted({c for pair in cells for c in pair})
    f1 = []
    for c in classes:
        tp = cells.get((c, c), 0.0)
        predicted = sum(v for (p, _), v in cells.items() if p == c)
        actual = sum(v for (_, a), v in cells.items() if a == c)
        f1.append(2 * tp / (predicted + actual) if predicted + actual > 0 else 0.0)
    accuracy = sum(v for (p, a), v in cells.items() if p == a) / rows
    return {"accuracy": accuracy, "f1_macro": float(np.mean(f1))}
