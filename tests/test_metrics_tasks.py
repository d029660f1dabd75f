"""collect-model-metrics logic against scikit-learn, and the store round trip."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sqlalchemy import func, select

from tasks.metrics import (
    Window,
    business_metrics,
    measure_quality,
    measure_traffic,
    quality_metrics,
    record_results,
    traffic_metrics,
)
from tests.conftest import save_predictions
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.intake.records import FeedbackRecord, PredictionRecord
from watchkeeper.store import Store
from watchkeeper.store.intake import store_feedback
from watchkeeper.store.schema import EvaluationResult

END = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def log_frame(n: int, labelled: float, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    predictions = np.where(rng.random(n) < 0.8, labels, 1 - labels)
    return pd.DataFrame(
        {
            "model_version": "v1",
            "prediction": predictions,
            "label": [int(v) if rng.random() < labelled else None for v in labels],
            "error": rng.random(n) < 0.05,
            "latency_seconds": rng.lognormal(-3, 0.3, n),
            "business_value": rng.uniform(10, 100, n),
        }
    )


def as_dict(measurements) -> dict[str, float]:  # noqa: ANN001
    return {m.metric: m.value for m in measurements if not m.labels}


def test_quality_equals_scikit_learn_on_the_joined_labels() -> None:
    log = log_frame(2000, labelled=0.9)
    got = as_dict(quality_metrics(log, positive_class=1, min_coverage=0.5))
    served = log[~log["error"] & log["label"].notna()]
    y_true, y_pred = served["label"].astype(int), served["prediction"].astype(int)
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert got["precision"] == pytest.approx(precision_score(y_true, y_pred))
    assert got["recall"] == pytest.approx(recall_score(y_true, y_pred))
    assert got["f1"] == pytest.approx(f1_score(y_true, y_pred))
    negatives = y_true == 0
    assert got["false_positive_rate"] == pytest.approx(((y_pred == 1) & negatives).sum() / negatives.sum())
    assert got["true_positives"] + got["false_negatives"] == (y_true == 1).sum()
    assert got["label_coverage_ratio"] == pytest.approx(len(served) / (~log["error"]).sum())


def test_a_window_below_label_coverage_publishes_only_its_coverage() -> None:
    log = log_frame(1000, labelled=0.3)
    got = as_dict(quality_metrics(log, positive_class=1, min_coverage=0.5))
    assert set(got) == {"label_coverage_ratio"}
    assert got["label_coverage_ratio"] < 0.5


def test_traffic_metrics() -> None:
    log = log_frame(600, labelled=1.0)
    measurements = traffic_metrics(log, Window(END - timedelta(minutes=5), END))
    got = as_dict(measurements)
    assert got["request_count"] == 600 and got["throughput_rps"] == pytest.approx(2.0)
    assert got["error_rate"] == pytest.approx(log["error"].mean())
    assert got["latency_p95_seconds"] == pytest.approx(log["latency_seconds"].quantile(0.95))
    shares = {m.labels["prediction_class"]: m.value for m in measurements if m.metric == "prediction_share"}
    assert set(shares) == {"0", "1"} and sum(shares.values()) == pytest.approx(1.0)


def test_business_impact_sums_the_value_of_correct_positives() -> None:
    log = pd.DataFrame(
        {
            "prediction": [1, 1, 0, 1],
            "label": [1, 0, 1, None],
            "error": [False] * 4,
            "business_value": [100.0, 50.0, 25.0, 10.0],
        }
    )
    [impact] = business_metrics(log, positive_class=1, metric_type="fraud_value_caught")
    assert impact.value == 100.0 and impact.labels == {"metric_type": "fraud_value_caught"}
    assert business_metrics(log, positive_class=1, metric_type="fraud_value_caught", min_coverage=0.75) == [
        impact
    ]
    # Labels not in yet (coverage 3/4 below 0.8): no value is published, rather than too little.
    assert business_metrics(log, positive_class=1, metric_type="fraud_value_caught", min_coverage=0.8) == []


def test_measured_windows_round_trip_through_the_store_without_duplicates(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    model = example_config.models[0]
    stamp = (END - timedelta(minutes=1)).isoformat()
    save_predictions(
        store,
        [
            PredictionRecord(
                model_name=model.name,
                model_version=version,
                request_id=f"{version}-{i}",
                timestamp=stamp,
                features={"salary": 1.0},
                prediction=i % 2,
                latency_seconds=0.01,
            )
            for version in ("v1", "v2")
            for i in range(10)
        ],
    )
    store_feedback(
        store, [FeedbackRecord(model_name=model.name, request_id=f"v1-{i}", label=i % 2) for i in range(10)]
    )
    window = Window(END - timedelta(minutes=5), END)
    traffic = measure_traffic.fn(store, model, window)
    quality = measure_quality.fn(store, model, window)
    assert as_dict(traffic["v2"])["request_count"] == 10
    # Both versions were first served a minute before the window's end: 10 in 60 s, not in 300 s.
    assert as_dict(traffic["v2"])["throughput_rps"] == pytest.approx(10 / 60)
    assert as_dict(quality["model_quality"]["v1"])["accuracy"] == 1.0
    assert "accuracy" not in as_dict(quality["model_quality"]["v2"])  # v2 has no labels yet
    for _ in range(2):
        record_results.fn(store, model, window, quality, None)
    with store.reading() as session:
        rows = session.scalar(select(func.count()).select_from(EvaluationResult))
    assert rows == sum(len(m) for by_version in quality.values() for m in by_version.values())
