"""Demo traffic: the classifier, the injections, its reference file, and posting to a real service."""

import threading
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from tasks.drift import evaluate_drift_window
from tasks.measurements import Window
from tests.conftest import LiveService
from tests.test_model_kinds import collect
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.local.demo import DailyCycle, DemoTraffic, Injections, run_demo_traffic, write_reference
from watchkeeper.local.demo_kinds import KindInjections, RecommendationTraffic, RegressionTraffic
from watchkeeper.store import Store
from watchkeeper.store.samples import Sampling
from watchkeeper.store.schema import EvaluationResult
from watchkeeper.times import utcnow


def accuracy(events) -> float:  # noqa: ANN001
    return float(np.mean([e.prediction == e.label for e in events if not e.error]))


def test_the_classifier_learns_the_stream_and_concept_drift_breaks_it() -> None:
    steady = DemoTraffic(train_size=2000, seed=1)
    drifted = DemoTraffic(train_size=2000, seed=1, injections=Injections(concept_drift_at=500))
    before = steady.next_batch(1000)
    drifted.next_batch(500)
    after = drifted.next_batch(1000)
    assert accuracy(before) > 0.9
    assert accuracy(after) < accuracy(before) - 0.2


def test_covariate_drift_nulls_latency_and_errors_start_where_asked() -> None:
    traffic = DemoTraffic(
        train_size=500,
        seed=2,
        injections=Injections(
            covariate_drift_at=200,
            nulls_at=200,
            null_feature="age",
            null_rate=0.5,
            latency_spike_at=200,
            latency_factor=20,
            error_burst_at=200,
            error_rate=0.5,
            incident_length=100,
        ),
    )
    quiet, injected, over = traffic.next_batch(200), traffic.next_batch(100), traffic.next_batch(200)
    assert not any(e.error or e.features["age"] is None for e in quiet)
    assert 0.3 < np.mean([e.features["age"] is None for e in injected]) < 0.7
    assert 0.3 < np.mean([e.error for e in injected]) < 0.7
    assert all(e.prediction is None for e in injected if e.error)
    assert np.median([e.latency_seconds for e in injected]) > 10 * np.median(
        [e.latency_seconds for e in quiet]
    )
    assert not any(e.error for e in over)  # the incident lasted 100 predictions
    salaries = lambda events: np.mean([e.features["salary"] for e in events])  # noqa: E731
    assert salaries(over) > 1.4 * salaries(quiet)  # covariate drift persists


def test_collapse_missing_feature_pipeline_failure_business_and_traffic_start_where_asked() -> None:
    traffic = DemoTraffic(
        train_size=500,
        seed=3,
        injections=Injections(
            prediction_collapse_at=100,
            collapse_class=0,
            missing_feature_at=100,
            missing_feature="car",
            pipeline_failure_at=100,
            business_decline_at=100,
            business_factor=0.5,
            traffic_drop_at=100,
            traffic_factor=0.1,
        ),
    )
    now = pd.Timestamp.now(tz="UTC").to_pydatetime()
    before = traffic.next_batch(100)
    assert traffic.rate_factor() == 0.1 and traffic.injected_at is None
    after = traffic.next_batch(100)
    assert traffic.injected_at is not None
    assert {e.prediction for e in before} == {0, 1} and {e.prediction for e in after} == {0}
    assert all("car" in e.features for e in before) and not any("car" in e.features for e in after)
    assert all(e.business_value == pytest.approx(0.5 * e.features["loan"], abs=0.01) for e in after)
    assert all(e.business_value == pytest.approx(e.features["loan"], abs=0.01) for e in before)
    assert traffic.pipeline_run_record("p", before, now)["errors"] == 0
    assert traffic.pipeline_run_record("p", after, now)["errors"] == 100


def test_the_daily_cycle_starts_at_the_mean_falls_to_its_trough_and_rises_to_its_peak() -> None:
    day = DailyCycle(period_seconds=3600, amplitude=0.3)
    assert day.factor(0) == pytest.approx(1.0)
    assert day.factor(900) == pytest.approx(0.7)  # a quarter day in: the trough
    assert day.factor(2700) == pytest.approx(1.3)  # three quarters: the peak
    assert day.factor(3600 + 900) == pytest.approx(0.7)  # every day alike
    for bad in ({"period_seconds": 0}, {"amplitude": 1.0}, {"amplitude": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DailyCycle(**bad)


def test_unknown_null_feature_is_refused() -> None:
    with pytest.raises(ValueError, match="null_feature"):
        Injections(null_feature="income")


def test_demo_traffic_posts_predictions_and_every_label(service: LiveService) -> None:
    traffic = DemoTraffic(train_size=300, seed=4)
    sent = run_demo_traffic(
        traffic,
        url=service.url,
        rate=0,
        count=250,
        batch_size=40,
        label_delay=100,
        pipeline="credit_feature_pipeline",
    )
    assert (sent.predictions, sent.feedback, sent.pipeline_runs) == (250, 250, 7)
    metrics = httpx.get(f"{service.url}/metrics").text
    assert 'watchkeeper_predictions_total{model_name="credit_approval",model_version="v1"} 250.0' in metrics
    assert 'watchkeeper_feedback_total{model_name="credit_approval",model_version="v1"} 250.0' in metrics
    series = '{pipeline_name="credit_feature_pipeline",stage="features"}'
    assert f"ai_pipeline_processing_latency_seconds_count{series} 7.0" in metrics


def test_the_held_back_reference_follows_training_is_labelled_and_scored_and_moves_drift_along() -> None:
    plain = DemoTraffic(train_size=500, seed=3)
    held = DemoTraffic(
        train_size=500, seed=3, reference_size=300, injections=Injections(concept_drift_at=100)
    )
    reference = held.reference
    assert len(reference) == 300 and set(reference.columns) >= {"salary", "prediction", "score", "label"}
    # The stream rows right after the training part: never trained on, never served as traffic.
    first = plain.next_batch(300)
    assert reference["salary"].tolist() == [e.features["salary"] for e in first]
    assert reference["label"].tolist() == [e.label for e in first]
    assert float((reference["prediction"] == reference["label"]).mean()) > 0.9
    # Injections still count served predictions: concept drift starts 100 predictions in.
    held.next_batch(100)
    assert accuracy(held.next_batch(500)) < 0.8


def test_demo_traffic_writes_the_reference_once_and_a_second_generator_keeps_it(
    tmp_path: Path, service: LiveService
) -> None:
    from tests.test_cli import run

    def demo(*args: str) -> str:
        result = run(
            "demo-traffic",
            *("--count", "20", "--rate", "0", "--train-size", "300", "--url", service.url, *args),
            home=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        return " ".join(result.stdout.split())

    written = tmp_path / "reference" / "credit_approval.parquet"
    assert f"wrote 250 held-back labelled rows to {written}" in demo("--reference-rows", "250")
    first = written.read_bytes()
    assert f"kept the existing reference {written}" in demo("--reference-rows", "300", "--seed", "8")
    assert written.read_bytes() == first and len(pd.read_parquet(written)) == 250
    assert f"wrote 300 held-back labelled rows to {written}" in demo(
        "--reference-rows", "300", "--replace-reference"
    )
    assert len(pd.read_parquet(written)) == 300
    assert not list(written.parent.glob(".*partial"))


def test_of_generators_starting_at_once_one_writes_the_reference(tmp_path: Path) -> None:
    path = tmp_path / "reference" / "model.parquet"
    barrier = threading.Barrier(8)
    wrote: dict[int, bool] = {}

    def write(i: int) -> None:
        frame = pd.DataFrame({"writer": [i] * 100})
        barrier.wait()
        wrote[i] = write_reference(frame, path)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [winner] = [i for i, won in wrote.items() if won]
    assert set(pd.read_parquet(path)["writer"]) == {winner}
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.parquet"]


@pytest.mark.parametrize(
    ("model", "demo", "fault", "score", "limit"),
    [
        ("demand_forecast", RegressionTraffic, "regression_bias_at", "ai_model_mae", "mae_warning"),
        (
            "product_recommendations",
            RecommendationTraffic,
            "ranking_collapse_at",
            "ai_model_ndcg_at_k_score",
            "ndcg_warning",
        ),
    ],
)
def test_each_kinds_demo_stays_within_the_examples_limits_until_its_fault(
    example_config: WatchkeeperConfig,
    store: Store,
    model: str,
    demo: type,
    fault: str,
    score: str,
    limit: str,
) -> None:
    """The regression and recommendation demos through the service and a collection: their clean
    traffic (version v1) is within the example's limits, so the drill's clean models page on
    nothing, and their fault (version v2, from its first prediction) crosses them."""
    configured = example_config.model(model)
    assert configured is not None
    with LiveService(example_config, store) as service:
        for version, seed, injections in (
            ("v1", 3, KindInjections()),
            ("v2", 4, KindInjections(**{fault: 0})),
        ):
            traffic = demo(
                model_name=model, model_version=version, train_size=2000, seed=seed, injections=injections
            )
            sent = run_demo_traffic(
                traffic, url=service.url, rate=0, count=400, batch_size=100, label_delay=50
            )
            assert (sent.predictions, sent.feedback) == (400, 400)
        collect(store, example_config, model)
        exported = text_string_to_metric_families(httpx.get(f"{service.url}/metrics").text)
        found = {
            sample.labels["model_version"]: sample.value
            for family in exported
            for sample in family.samples
            if sample.name == score
            and sample.labels["model_name"] == model
            and sample.labels.get("k", "5") == "5"
        }
    threshold = getattr(configured.thresholds, limit)
    if limit == "mae_warning":
        assert found["v1"] < threshold < found["v2"]
    else:
        assert found["v1"] > threshold > found["v2"]


@pytest.mark.parametrize("model", ["demand_forecast", "product_recommendations"])
def test_each_kinds_drift_window_is_judged_on_its_features(
    example_config: WatchkeeperConfig, store: Store, tmp_path: Path, model: str
) -> None:
    """The drift flow's task on the demo's stored sample against its held-back reference: a
    regression model's prediction is tested as a number, a ranking model's lists are left to the
    collection (`recommended_items_drift`), and neither breaks Evidently."""
    configured = example_config.model(model)
    assert configured is not None
    demo = RegressionTraffic if configured.task == "regression" else RecommendationTraffic
    traffic = demo(model_name=model, train_size=1000, seed=5, reference_size=600)
    with LiveService(example_config, store) as service:
        run_demo_traffic(traffic, url=service.url, rate=0, count=600, batch_size=200, label_delay=0)
    end = utcnow() + timedelta(minutes=1)
    window = Window(end - timedelta(minutes=30), end)
    result = evaluate_drift_window.fn(
        store, configured, window, traffic.reference, tmp_path, Sampling.of(example_config), None
    )
    assert result.status == "evaluated", result.status
    assert result.share is not None and result.share < 0.5 and not result.dataset_drift
    with store.reading() as session:
        tested = set(
            session.scalars(
                select(EvaluationResult.metric).where(
                    EvaluationResult.subject == model, EvaluationResult.kind == "drift"
                )
            )
        )
    assert ("prediction_drift_score" in tested) == (configured.task == "regression")
