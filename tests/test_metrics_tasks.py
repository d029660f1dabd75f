"""collect-model-metrics logic against scikit-learn, and the store round trip."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sqlalchemy import func, select

from tasks.measurements import Window
from tasks.metrics import bucket_window, measure_quality, measure_traffic, record_results
from tests.conftest import save_predictions, store_feedback
from watchkeeper.config import Model, WatchkeeperConfig
from watchkeeper.intake.aggregates import bucket_start
from watchkeeper.intake.records import FeedbackRecord, PredictionRecord
from watchkeeper.store import Store
from watchkeeper.store.schema import EvaluationResult

END = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.fixture
def model(example_config: WatchkeeperConfig) -> Model:
    return example_config.models[0]


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


def through_the_intake(store: Store, model: Model, log: pd.DataFrame, at: datetime = END) -> Window:
    """`log`'s predictions and labels stored as a model service sends them (in batches, labels
    after their predictions, some labels sent twice); returns the window the collection would
    read at `at`."""
    records = [
        PredictionRecord(
            model_name=model.name,
            model_version=row.model_version,
            request_id=f"r{i}",
            timestamp=(at - timedelta(seconds=30 + i % 600)).isoformat(),
            features={"salary": 1.0},
            error=bool(row.error),
            prediction=None if row.error else int(row.prediction),
            latency_seconds=float(row.latency_seconds),
        )
        for i, row in enumerate(log.itertuples())
    ]
    labels = [
        FeedbackRecord(
            model_name=model.name,
            request_id=f"r{i}",
            label=int(row.label),
            business_value=float(row.business_value),
        )
        for i, row in enumerate(log.itertuples())
        if row.label is not None and not pd.isna(row.label)
    ]
    for start in range(0, len(records), 700):
        save_predictions(store, records[start : start + 700])
    store_feedback(store, labels)
    store_feedback(store, labels[: len(labels) // 3])  # a retried batch counts once
    return bucket_window(at, timedelta(minutes=30), 60)


def test_quality_equals_scikit_learn_on_the_joined_labels(store: Store, model: Model) -> None:
    log = log_frame(2000, labelled=0.9)
    window = through_the_intake(store, model, log)
    got = as_dict(measure_quality(store, model, window)["model_quality"]["v1"])
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
    caught = served[(served["prediction"] == 1) & (served["label"] == 1)]["business_value"].sum()
    impact = measure_quality(store, model, window)["model_quality"]["v1"]
    assert [m.value for m in impact if m.metric == "business_impact"] == [pytest.approx(caught)]


def test_a_window_below_label_coverage_publishes_only_its_coverage(store: Store, model: Model) -> None:
    log = log_frame(1000, labelled=0.3)
    window = through_the_intake(store, model, log)
    got = as_dict(measure_quality(store, model, window)["model_quality"]["v1"])
    # Labels not in yet: neither quality nor business value is published, rather than too little.
    assert set(got) == {"label_coverage_ratio"}
    assert got["label_coverage_ratio"] < 0.5


def test_traffic_metrics(store: Store, model: Model) -> None:
    log = log_frame(600, labelled=1.0)
    window = through_the_intake(store, model, log)
    measurements = measure_traffic(store, model, window)["v1"]
    got = as_dict(measurements)
    # The predictions span the ten minutes before END: counted from the first one's bucket.
    served_seconds = (END - bucket_start(END - timedelta(seconds=629), 60)).total_seconds()
    assert got["request_count"] == 600 and got["throughput_rps"] == pytest.approx(600 / served_seconds)
    assert got["error_rate"] == pytest.approx(log["error"].mean())
    for q, name in ((0.5, "latency_p50_seconds"), (0.95, "latency_p95_seconds")):
        assert got[name] == pytest.approx(log["latency_seconds"].quantile(q), rel=0.02)
    shares = {m.labels["prediction_class"]: m.value for m in measurements if m.metric == "prediction_share"}
    expected = log.loc[~log["error"], "prediction"].value_counts(normalize=True)
    assert shares == pytest.approx({str(k): v for k, v in expected.items()})


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
    traffic = measure_traffic(store, model, window)
    quality = measure_quality(store, model, window)
    assert as_dict(traffic["v2"])["request_count"] == 10
    # Both versions were first served a minute before the window's end: 10 in 60 s, not in 300 s.
    assert as_dict(traffic["v2"])["throughput_rps"] == pytest.approx(10 / 60)
    assert as_dict(quality["model_quality"]["v1"])["accuracy"] == 1.0
    assert "accuracy" not in as_dict(quality["model_quality"]["v2"])  # v2 has no labels yet
    for _ in range(2):
        record_results(store, model, {window: quality}, None)
    with store.reading() as session:
        rows = session.scalar(select(func.count()).select_from(EvaluationResult))
    assert rows == sum(len(m) for by_version in quality.values() for m in by_version.values())


def test_one_failing_model_does_not_stop_the_collection_of_the_others(
    prefect_api: None, store: Store, example_config: WatchkeeperConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One task collects every model; a model that fails is named, the others are saved, and the
    task fails so that Prefect retries it."""
    from prefect import flow

    import tasks.metrics

    broken, healthy = example_config.models[0], example_config.models[0].model_copy(update={"name": "other"})
    through_the_intake(store, healthy, log_frame(400, labelled=1.0))
    collect_model = tasks.metrics.collect_model

    def failing_for_broken(store: Store, model: Model, *args: object) -> int:
        if model.name == broken.name:
            raise ValueError("a broken model")
        return collect_model(store, model, *args)

    monkeypatch.setattr(tasks.metrics, "collect_model", failing_for_broken)

    @flow(retries=0)
    def collection() -> dict[str, int]:
        return tasks.metrics.collect_models.with_options(retries=0)(
            store, example_config, [broken, healthy], END, None
        )

    with pytest.raises(RuntimeError, match=f"collection failed for {broken.name}"):
        collection()
    with store.reading() as session:
        subjects = set(session.scalars(select(EvaluationResult.subject).distinct()))
    assert subjects == {"other"}


def test_the_history_keeps_one_window_per_slot_and_metrics_read_every_cycle(
    store: Store, model: Model, example_config: WatchkeeperConfig
) -> None:
    """Cycles every 15 s for 10 minutes with `retention.results_every: 5m`: the history holds the
    first window of each 5-minute slot; the latest window (what /metrics reads) is every cycle's."""
    from watchkeeper.service.metrics import latest_results

    through_the_intake(store, model, log_frame(300, labelled=1.0))
    every = example_config.retention.results_every
    for cycle in range(40):
        end = END + timedelta(seconds=15 * cycle + 7)
        traffic = measure_traffic(store, model, bucket_window(end, model.windows.metrics, 60))
        record_results(
            store,
            model,
            {bucket_window(end, model.windows.metrics, 60): {"model_traffic": traffic}},
            None,
            every,
        )
    with store.reading() as session:
        ends = sorted(
            session.scalars(
                select(EvaluationResult.window_end).where(EvaluationResult.metric == "request_count")
            )
        )
        latest = [r for r in latest_results(session) if r.metric == "request_count"]
    assert every == timedelta(minutes=5)
    assert [end - END for end in ends] == [timedelta(seconds=7), timedelta(minutes=5, seconds=7)]
    assert len(latest) == 1
