"""Each kind on data the project was not built on: scikit-learn's bundled `load_digits` (ten
classes) and `load_diabetes` (a regression), shipped on disk. A real model of each is trained on
one part, its reference is another, production a third; posted through the service with half the
labels, the exported scores are scikit-learn's on the labelled half, and the estimates before
labels (CBPE one class against the rest, DLE) land near the unlabelled half's realised figures."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_digits
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score, recall_score
from sklearn.model_selection import train_test_split

from tests.conftest import LiveService
from tests.test_model_kinds import collect_with_reference, exported, one
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.store import Store
from watchkeeper.times import utcnow


def fleet(tmp_path: Path, name: str, task: str, features: list[str], **extra: Any) -> WatchkeeperConfig:
    model = {
        "name": name,
        "version": "v1",
        "task": task,
        "features": [{"name": f, "type": "numerical"} for f in features],
        "reference": {"kind": "file", "path": str(tmp_path / f"{name}.csv")},
        **{"windows": {"quality": "30m", "min_rows": 50}, **extra},
    }
    return WatchkeeperConfig.model_validate({"models": [model]})


def send(url: str, name: str, x: pd.DataFrame, predicted: list[Any], extra: list[dict[str, Any]]) -> None:
    now = (utcnow() - timedelta(minutes=1)).isoformat()
    records = [
        {
            "model_name": name,
            "model_version": "v1",
            "request_id": f"{name}-{i}",
            "timestamp": now,
            "features": {k: float(v) for k, v in row.items()},
            "prediction": predicted[i],
            **extra[i],
        }
        for i, (_, row) in enumerate(x.iterrows())
    ]
    assert httpx.post(f"{url}/v1/predictions", json=records, timeout=60).status_code == 200


def label(url: str, name: str, labels: list[Any]) -> None:
    sent = [{"model_name": name, "request_id": f"{name}-{i}", "label": y} for i, y in enumerate(labels)]
    assert httpx.post(f"{url}/v1/feedback", json=sent, timeout=60).status_code == 200


def test_digits_a_ten_class_model_is_scored_as_scikit_learn_scores_it_and_estimated_before_labels(
    store: Store, tmp_path: Path
) -> None:
    digits = load_digits(as_frame=True)
    x = digits.data.loc[:, digits.data.std() > 0]
    x = x[x.columns[::4]]  # sixteen pixels: a model that errs often enough to measure
    y = digits.target.astype(str)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=0.4, random_state=1, stratify=y)
    x_ref, x_live, y_ref, y_live = train_test_split(x_rest, y_rest, train_size=0.5, random_state=2)
    classifier = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    classes = [str(c) for c in classifier.classes_]

    def scored(frame: pd.DataFrame) -> list[dict[str, float]]:
        return [dict(zip(classes, map(float, p), strict=True)) for p in classifier.predict_proba(frame)]

    reference = x_ref.assign(prediction=classifier.predict(x_ref), label=y_ref.to_numpy())
    reference["scores"] = [json.dumps(s) for s in scored(x_ref)]
    reference.to_csv(tmp_path / "digits.csv", index=False)
    config = fleet(tmp_path, "digits", "multiclass", list(x.columns), classes=classes)
    predicted = [str(p) for p in classifier.predict(x_live)]
    half = len(x_live) // 2
    with LiveService(config, store) as service:
        send(service.url, "digits", x_live, predicted, [{"scores": s} for s in scored(x_live)])
        label(service.url, "digits", list(y_live[:half]))
        collect_with_reference(store, config, "digits")
        got = exported(service.url, "digits")
    truth, guess = list(y_live[:half]), predicted[:half]
    assert one(got["ai_model_accuracy_score"]) == pytest.approx(accuracy_score(truth, guess))
    assert one(got["ai_model_f1_macro_score"]) == pytest.approx(f1_score(truth, guess, average="macro"))
    recalls = recall_score(truth, guess, labels=classes, average=None, zero_division=0)
    for name, value in zip(classes, recalls, strict=True):
        assert one(got["ai_model_class_recall_score"], **{"class": name}) == pytest.approx(value)
    realised = accuracy_score(list(y_live[half:]), predicted[half:])
    estimated = one(got["ai_model_estimated_accuracy_score"])
    assert abs(estimated - realised) < 0.05, (estimated, realised)
    realised_f1 = f1_score(list(y_live[half:]), predicted[half:], average="macro")
    assert abs(one(got["ai_model_estimated_f1_macro_score"]) - realised_f1) < 0.06


def test_diabetes_a_regressor_is_scored_as_scikit_learn_scores_it_and_its_mae_estimated_before_labels(
    store: Store, tmp_path: Path
) -> None:
    diabetes = load_diabetes(as_frame=True)
    x, y = diabetes.data, diabetes.target
    # 442 rows: 132 to train, 230 of reference (DLE fits from 200), 80 in production.
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=132, random_state=3)
    x_ref, x_live, y_ref, y_live = train_test_split(x_rest, y_rest, train_size=230, random_state=4)
    regressor = HistGradientBoostingRegressor(max_iter=100, random_state=0).fit(x_train, y_train)
    reference = x_ref.assign(prediction=regressor.predict(x_ref), label=y_ref.to_numpy())
    reference.to_csv(tmp_path / "diabetes.csv", index=False)
    windows = {"quality": "30m", "min_rows": 30}
    config = fleet(tmp_path, "diabetes", "regression", list(x.columns), windows=windows)
    predicted = [float(p) for p in regressor.predict(x_live)]
    half = len(x_live) // 2
    with LiveService(config, store) as service:
        send(service.url, "diabetes", x_live, predicted, [{}] * len(predicted))
        label(service.url, "diabetes", [float(v) for v in y_live[:half]])
        collect_with_reference(store, config, "diabetes")
        got = exported(service.url, "diabetes")
    truth, guess = y_live[:half].to_numpy(), np.array(predicted[:half])
    assert one(got["ai_model_mae"]) == pytest.approx(mean_absolute_error(truth, guess))
    assert one(got["ai_model_r2_score"]) == pytest.approx(r2_score(truth, guess))
    realised = mean_absolute_error(y_live[half:], predicted[half:])
    estimated = one(got["ai_model_estimated_mae"])
    assert abs(estimated - realised) < 0.3 * realised, (estimated, realised)
