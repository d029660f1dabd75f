"""The HTTP service over real loopback HTTP, on SQLite and PostgreSQL."""

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveService
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.store import Store


def predictions(n: int, start: int = 0, model: str = "credit_approval") -> list[dict]:
    now = datetime(2026, 11, 26, 9, 0, tzinfo=UTC).isoformat()
    return [
        {
            "model_name": model,
            "model_version": "v1",
            "request_id": f"req-{i}",
            "timestamp": now,
            "features": {"salary": 40_000 + i, "age": 30, "elevel": 1},
            "prediction": i % 2,
            "score": 0.5,
            "latency_seconds": 0.01,
        }
        for i in range(start, start + n)
    ]


def counts(url: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{url}/metrics").text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in {"watchkeeper_predictions_total", "watchkeeper_feedback_total"}:
                found[(sample.name, sample.labels["model_version"])] = sample.value
    return found


def test_ten_thousand_predictions_in_one_request(service: LiveService) -> None:
    response = httpx.post(f"{service.url}/v1/predictions", json=predictions(10_000), timeout=120)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 10_000, "stored": 10_000, "duplicates": 0}
    assert counts(service.url)[("watchkeeper_predictions_total", "v1")] == 10_000


def test_one_malformed_record_refuses_the_batch_and_names_it(service: LiveService) -> None:
    batch = predictions(100)
    batch[37]["timestamp"] = "yesterday"
    response = httpx.post(f"{service.url}/v1/predictions", json=batch)
    assert response.status_code == 422
    body = response.json()
    assert (body["index"], body["field"]) == (37, "timestamp")
    assert counts(service.url) == {}


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda r: r.pop("request_id"), "request_id", "required field is missing"),
        (lambda r: r.update(timestamp="2026-11-26T09:00:00"), "timestamp", "timezone"),
        (lambda r: r.update(features=[1, 2]), "features", "dictionary"),
        (lambda r: r.update(prediction=None), "prediction", "required unless error is true"),
        (lambda r: r.update(latency_seconds=-1), "latency_seconds", "greater than or equal to 0"),
        (lambda r: r.update(colour="red"), "colour", "unknown field"),
        (lambda r: r.update(model_name="fraud"), "model_name", "unknown model 'fraud'"),
    ],
)
def test_bad_records_get_422_with_index_and_field(
    service: LiveService, change, field: str, message: str
) -> None:
    batch = predictions(3)
    change(batch[2])
    response = httpx.post(f"{service.url}/v1/predictions", json=batch)
    assert response.status_code == 422
    body = response.json()
    assert body["index"] == 2 and body["field"] == field and message in body["error"]


def test_the_same_batch_twice_counts_once(service: LiveService) -> None:
    batch = predictions(500)
    assert httpx.post(f"{service.url}/v1/predictions", json=batch).json()["stored"] == 500
    again = httpx.post(f"{service.url}/v1/predictions", json=batch).json()
    assert (again["stored"], again["duplicates"]) == (0, 500)
    assert counts(service.url)[("watchkeeper_predictions_total", "v1")] == 500


def test_ndjson_predictions_and_feedback(service: LiveService) -> None:
    body = "\n".join(json.dumps(r) for r in predictions(20)) + "\n"
    response = httpx.post(
        f"{service.url}/v1/predictions", content=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert response.json()["stored"] == 20
    labels = [{"model_name": "credit_approval", "request_id": f"req-{i}", "label": 1} for i in range(5)]
    labels.append(
        {"model_name": "credit_approval", "request_id": "req-unscored", "label": 0, "business_value": 3.5}
    )
    assert httpx.post(f"{service.url}/v1/feedback", json=labels).json()["stored"] == 6
    found = counts(service.url)
    assert found[("watchkeeper_feedback_total", "v1")] == 5
    assert found[("watchkeeper_feedback_total", "unknown")] == 1


def test_broken_ndjson_line_is_named(service: LiveService) -> None:
    body = json.dumps(predictions(1)[0]) + "\n{not json\n"
    response = httpx.post(f"{service.url}/v1/predictions", content=body)
    assert response.status_code == 422
    assert response.json()["index"] == 1 and "line 2" in response.json()["error"]


def test_limits_give_413(example_config: WatchkeeperConfig, store: Store) -> None:
    small = example_config.model_copy(
        update={
            "intake": example_config.intake.model_copy(update={"max_body_bytes": 20_000, "max_records": 10})
        }
    )
    with LiveService(small, store) as live:
        too_many = httpx.post(f"{live.url}/v1/predictions", json=predictions(11))
        too_big = httpx.post(f"{live.url}/v1/predictions", json=predictions(10) + [{"padding": "x" * 30_000}])
        fits = httpx.post(f"{live.url}/v1/predictions", json=predictions(10))
    assert too_many.status_code == 413 and "11 records" in too_many.json()["error"]
    assert too_big.status_code == 413
    assert fits.status_code == 200


def test_bearer_token_is_required_on_posts_when_configured(
    example_config: WatchkeeperConfig, store: Store
) -> None:
    with LiveService(example_config, store, api_token="s3cret-token") as live:
        missing = httpx.post(f"{live.url}/v1/predictions", json=predictions(1))
        wrong = httpx.post(f"{live.url}/v1/feedback", json=[], headers={"Authorization": "Bearer nope"})
        right = httpx.post(
            f"{live.url}/v1/predictions",
            json=predictions(1),
            headers={"Authorization": "Bearer s3cret-token"},
        )
        open_reads = httpx.get(f"{live.url}/healthz"), httpx.get(f"{live.url}/metrics")
    assert missing.status_code == 401 and wrong.status_code == 401
    assert right.status_code == 200
    assert all(r.status_code == 200 for r in open_reads)


def test_metrics_survive_a_restart_and_agree_across_replicas(
    example_config: WatchkeeperConfig, store: Store
) -> None:
    with LiveService(example_config, store) as first:
        httpx.post(f"{first.url}/v1/predictions", json=predictions(30))
    with LiveService(example_config, store) as second, LiveService(example_config, store) as third:
        httpx.post(f"{third.url}/v1/predictions", json=predictions(10, start=30))
        assert counts(second.url) == counts(third.url) == {("watchkeeper_predictions_total", "v1"): 40}


def test_healthz_checks_the_store(service: LiveService, store: Store) -> None:
    healthy = httpx.get(f"{service.url}/healthz")
    assert healthy.status_code == 200
    assert healthy.json()["store"] == "ok" and healthy.json()["revision"] == store.head_revision()
    store.engine.dispose()
    with store.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE alembic_version")
    assert httpx.get(f"{service.url}/healthz").status_code == 503


def samples(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_latency_is_a_cumulative_histogram_with_the_configured_buckets(
    service: LiveService, example_config: WatchkeeperConfig
) -> None:
    batch = predictions(5)
    for record, latency in zip(batch, [0.003, 0.02, 0.2, 20.0, 0.02], strict=True):
        record["latency_seconds"] = latency
    batch[4]["request_id"] = batch[0]["request_id"]  # a duplicate adds no observation
    httpx.post(f"{service.url}/v1/predictions", json=batch).raise_for_status()
    httpx.post(f"{service.url}/v1/predictions", json=batch).raise_for_status()
    buckets = {
        dict(labels)["le"]: value
        for labels, value in samples(service.url, "ai_model_inference_latency_seconds_bucket").items()
    }
    assert buckets["0.005"] == 1 and buckets["0.025"] == 2 and buckets["0.25"] == 3
    assert buckets["10.0"] == 3 and buckets["+Inf"] == 4
    # The intake stores only the buckets hit; every configured bound is exported all the same.
    configured = example_config.models[0].latency_buckets
    assert set(buckets) == {*(repr(float(le)) for le in configured), "+Inf"}
    series = (("model_name", "credit_approval"), ("model_version", "v1"))
    assert samples(service.url, "ai_model_inference_latency_seconds_count") == {series: 4}
    assert samples(service.url, "ai_model_inference_latency_seconds_sum")[series] == pytest.approx(20.223)


def test_pipeline_runs_are_stored_once_and_feed_the_duration_histogram_and_record_counters(
    service: LiveService,
) -> None:
    runs = [
        {
            "pipeline_name": "credit_feature_pipeline",
            "run_id": "r1",
            "stage": stage,
            "duration_seconds": seconds,
            "started_at": "2026-11-26T08:00:00Z",
            "records": 1000,
            "errors": 3,
        }
        for stage, seconds in [("extract", 12.0), ("transform", 400.0)]
    ]
    assert httpx.post(f"{service.url}/v1/pipeline-runs", json=runs).json()["stored"] == 2
    assert httpx.post(f"{service.url}/v1/pipeline-runs", json=runs).json()["duplicates"] == 2
    counts = samples(service.url, "ai_pipeline_processing_latency_seconds_count")
    stages = [(("pipeline_name", "credit_feature_pipeline"), ("stage", s)) for s in ("extract", "transform")]
    assert counts == dict.fromkeys(stages, 1)
    # Records and failed records, counted once per run: the anomaly rules' error ratio.
    assert samples(service.url, "ai_pipeline_records_total") == dict.fromkeys(stages, 1000)
    assert samples(service.url, "ai_pipeline_record_errors_total") == dict.fromkeys(stages, 3)
    unknown = httpx.post(f"{service.url}/v1/pipeline-runs", json=[{**runs[0], "pipeline_name": "etl"}])
    assert unknown.status_code == 422 and unknown.json()["field"] == "pipeline_name"


def test_latest_evaluated_window_is_exported_as_gauges(
    service: LiveService, store: Store, example_config: WatchkeeperConfig
) -> None:
    from tasks.metrics import Measurement, Window, save_results

    end = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    older, newer = (
        Window(end - timedelta(hours=2), end - timedelta(hours=1)),
        Window(end - timedelta(hours=1), end),
    )
    save_results(store, "model_quality", "credit_approval", "v1", older, [Measurement("accuracy", 0.91)])
    save_results(
        store,
        "model_quality",
        "credit_approval",
        "v1",
        newer,
        [
            Measurement("accuracy", 0.72),
            Measurement("business_impact", 1e6, {"metric_type": "loan_value_approved"}),
        ],
    )
    save_results(
        store,
        "drift",
        "credit_approval",
        "",
        newer,
        [Measurement("drift_score", 0.4, {"feature_name": "salary"}), Measurement("drift_share", 0.25)],
    )
    assert samples(service.url, "ai_model_accuracy_score") == {
        (("model_name", "credit_approval"), ("model_version", "v1")): 0.72
    }
    assert samples(service.url, "ai_business_impact_score") == {
        (("metric_type", "loan_value_approved"), ("model_name", "credit_approval")): 1e6
    }
    assert samples(service.url, "ai_data_drift_score") == {
        (("feature_name", "salary"), ("model_name", "credit_approval")): 0.4
    }
    stamps = samples(service.url, "watchkeeper_evaluation_timestamp_seconds")
    assert set(stamps) == {
        (("kind", "model_quality"), ("model_name", "credit_approval")),
        (("kind", "drift"), ("model_name", "credit_approval")),
    }
    assert all(abs(v - datetime.now(UTC).timestamp()) < 600 for v in stamps.values())


def test_batches_waiting_on_the_store_leave_threads_for_scrapes_and_alerts(
    service: LiveService, store: Store
) -> None:
    """Fifty model services post while the store cannot take their writes: the batches wait (at
    most INTAKE_THREADS of them in threads), `/metrics` still answers, and every batch is stored
    once the store frees up."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import text

    from watchkeeper.service.app import INTAKE_THREADS

    posting = 50
    assert posting > 40 > INTAKE_THREADS  # more batches than the default thread pool has threads
    with ThreadPoolExecutor(posting) as pool:
        with store.writing() as session:  # SQLite: the write lock; PostgreSQL: the keys' table
            if not store.is_sqlite:
                session.execute(text("LOCK TABLE prediction_keys IN ACCESS EXCLUSIVE MODE"))
            posts = [
                pool.submit(
                    httpx.post, f"{service.url}/v1/predictions", json=predictions(20, 20 * i), timeout=120
                )
                for i in range(posting)
            ]
            scrape = httpx.get(f"{service.url}/metrics", timeout=20)
            assert scrape.status_code == 200
            assert not any(post.done() for post in posts)  # still waiting for the store
        assert [post.result().status_code for post in posts] == [200] * posting
    assert counts(service.url)[("watchkeeper_predictions_total", "v1")] == 20 * posting


def test_the_exposition_is_the_library_s_and_follows_families_rebuilt() -> None:
    """`/metrics` sends a family it rendered before as rendered then, while it is the same object:
    byte for byte what prometheus_client renders, in both formats, before and after a change."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import Collector

    from watchkeeper.service.metrics import Exposition

    def gauge(value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily("ai_model_accuracy_score", "Accuracy.", labels=["model_name"])
        family.add_metric(["credit_approval"], value)
        return family

    class Families(Collector):
        def __init__(self) -> None:
            self.evaluations, self.stored = [gauge(0.9)], 10.0

        def collect(self):  # noqa: ANN202
            yield from self.evaluations
            yield CounterMetricFamily("watchkeeper_predictions", "Stored.", value=self.stored)

    registry, families = CollectorRegistry(auto_describe=False), Families()
    registry.register(families)
    exposed = Exposition(registry)
    openmetrics = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    for change in (
        lambda: None,
        lambda: setattr(families, "stored", 12.0),
        lambda: families.evaluations.__setitem__(0, gauge(0.5)),
    ):
        change()
        for accept in ("", openmetrics):
            encode, content_type = choose_encoder(accept)
            assert exposed(accept) == (encode(registry), content_type)
    assert b"0.5" in exposed("")[0] and b"12.0" in exposed(openmetrics)[0]
