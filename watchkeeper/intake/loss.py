"""A regression model's error before its labels arrive: direct loss estimation (DLE).

The method is NannyML's (https://nannyml.readthedocs.io/en/stable/how_it_works/performance_estimation.html),
built here on scikit-learn: a second model, fitted on the model's labelled reference (which the
model was not trained on), learns the absolute error |label - prediction| from the features and the
prediction. The intake gives each served prediction its expected absolute error as it arrives, and
the aggregates add it up until the prediction's label takes it out again (`awaiting_loss`), so a
window's estimated MAE is that of its predictions still without a label.

Like CBPE, DLE assumes the relation between features and label holds: it sees the model moving into
regions where it errs more (covariate shift), not a change of the world (a bias, a new concept),
which only the labels show. `benchmarks/loss_estimation.py` measures both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor

from watchkeeper.config import Model
from watchkeeper.intake.checks import is_number

MIN_REFERENCE_ROWS = 200  # labelled reference rows below which no loss model is fitted


@dataclass(frozen=True)
class LossModel:
    """Features and prediction -> expected absolute error, fitted on a labelled reference."""

    regressor: HistGradientBoostingRegressor
    numerical: tuple[str, ...]
    categories: dict[str, dict[str, int]]  # a categorical feature's values -> their codes

    def rows(self, features: Sequence[dict[str, Any]], predictions: Sequence[float]) -> np.ndarray:
        """One row per record: numbers as they are (anything else missing), categories by code."""
        columns = [
            [float(f[name]) if is_number(f.get(name)) else np.nan for f in features]
            for name in self.numerical
        ]
        columns += [
            [float(codes.get(str(f.get(name)), np.nan)) for f in features]
            for name, codes in self.categories.items()
        ]
        columns.append([float(p) for p in predictions])
        return np.array(columns, dtype=float).T

    def expected(self, features: Sequence[dict[str, Any]], predictions: Sequence[float]) -> np.ndarray:
        if not predictions:
            return np.array([], dtype=float)
        return np.maximum(self.regressor.predict(self.rows(features, predictions)), 0.0)


def fit_loss_model(model: Model, reference: pd.DataFrame) -> LossModel | None:
    """The loss model of a regression model's reference; None without enough labelled rows."""
    needed = {model.prediction_column, model.label_column}
    if not needed <= set(reference.columns):
        return None
    predictions = pd.to_numeric(reference[model.prediction_column], errors="coerce")
    labels = pd.to_numeric(reference[model.label_column], errors="coerce")
    known = predictions.notna() & labels.notna()
    if known.sum() < MIN_REFERENCE_ROWS:
        return None
    frame = reference[known]
    numerical = tuple(f.name for f in model.features if f.type == "numerical" and f.name in frame)
    categories = {
        f.name: {
            value: code for code, value in enumerate(sorted(frame[f.name].dropna().astype(str).unique()))
        }
        for f in model.features
        if f.type == "categorical" and f.name in frame
    }
    # Stopped early on a held-out tenth: |error| is mostly noise, which a hundred trees would fit
    # (benchmarks/loss_estimation.py: 0.032 against 0.082 under covariate shift), and each tree
    # costs every call the intake makes.
    regressor = HistGradientBoostingRegressor(random_state=0, early_stopping=True)
    shell = LossModel(regressor, numerical, categories)
    records = frame.to_dict("records")
    x = shell.rows(records, list(predictions[known]))
    y = np.abs(labels[known].to_numpy() - predictions[known].to_numpy())
    shell.regressor.fit(x, y)
    return shell
