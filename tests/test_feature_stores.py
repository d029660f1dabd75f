"""Feature-store health: lookups at intake, each view's freshness, the null and default share of its
features, and a store's alerts in its models' incidents."""

from datetime import timedelta

import httpx
import pandas as pd
import pytest

from tasks.feature_stores import evaluate_feature_store, served_shares
from tasks.incidents import correlate_pending_alerts
from tasks.measurements import Window
from tests.conftest import LiveService
from tests.test_incidents import alert, incidents, notify
from tests.test_service import samples
from watchkeeper.config import FeatureView, WatchkeeperConfig
from watchkeeper.intake.records import FeatureLookupRecord, PipelineRunRecord
from watchkeeper.local.demo import DemoTraffic, Injections, demo_feature_store, run_demo_traffic
from watchkeeper.store import Store
from watchkeeper.store.intake import feature_lookup_writer, store_pipeline_runs
from watchkeeper.store.samples import Sampling
from watchkeeper.times import utcnow

STORE, VIEW = "credit_online_features", "applicant_profile"
SERIES = (("feature_store", STORE), ("feature_view", VIEW))


def lookup(request_id: str, **fields: object) -> dict:
    return {
        "feature_store": STORE,
        "feature_view": VIEW,
        "request_id": request_id,
        "timestamp": utcnow().isoformat(),
        "latency_seconds": 0.004,
        **fields,
    }


def test_lookups_are_stored_once_and_counted_by_view(service: LiveService) -> None:
    batch = [lookup("r1"), lookup("r2", latency_seconds=0.3, keys=4, errors=3), lookup("r3", keys=2)]
    first = httpx.post(f"{service.url}/v1/feature-lookups", json=batch)
    assert first.status_code == 200 and first.json()["stored"] == 3
    again = httpx.post(f"{service.url}/v1/feature-lookups", json=batch[:2])
    assert again.json()["duplicates"] == 2
    assert samples(service.url, "ai_feature_store_keys_total") == {SERIES: 7}
    assert samples(service.url, "ai_feature_store_key_errors_total") == {SERIES: 3}
    assert samples(service.url, "ai_feature_store_lookup_latency_seconds_count") == {SERIES: 3}
    slow = samples(service.url, "ai_feature_store_lookup_latency_seconds_bucket")
    assert slow[(*SERIES, ("le", "0.25"))] == 2 and slow[(*SERIES, ("le", "0.5"))] == 3
    assert samples(service.url, "ai_feature_view_max_age_seconds") == {SERIES: 300}
    assert samples(service.url, "ai_feature_store_latency_limit_seconds") == {(SERIES[0],): 0.05}


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        (
            {"feature_view": "merchant"},
            "feature_view",
            "expected one of its configured views (applicant_profile)",
        ),
        ({"feature_store": "offline"}, "feature_store", "credit_online_features"),
        ({"keys": 2, "errors": 3}, "errors", "at most keys (2)"),
        ({"latency_seconds": -1}, "latency_seconds", "greater than or equal to 0"),
    ],
)
def test_a_lookup_the_config_does_not_know_is_refused_naming_its_field(
    service: LiveService, change: dict, field: str, says: str
) -> None:
    refused = httpx.post(f"{service.url}/v1/feature-lookups", json=[lookup("ok"), lookup("bad", **change)])
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == field and refused.json()["index"] == 1
    assert says in refused.json()["error"]
    assert samples(service.url, "ai_feature_store_keys_total") == {}  # nothing of the batch stored


def evaluate(store: Store, config: WatchkeeperConfig, end_in: timedelta = timedelta(0)) -> dict[str, float]:
    end = utcnow() + end_in
    measured = evaluate_feature_store.fn(
        store, config.feature_stores[0], Window(end - timedelta(minutes=15), end), Sampling.of(config), None
    )
    return {f"{m.metric}:{m.labels.get('feature', '')}": m.value for m in measured}


def run(run_id: str, ago: timedelta, records: int, errors: int) -> PipelineRunRecord:
    return PipelineRunRecord.model_validate(
        {
            "pipeline_name": "credit_feature_pipeline",
            "run_id": run_id,
            "started_at": (utcnow() - ago).isoformat(),
            "duration_seconds": 30.0,
            "records": records,
            "errors": errors,
        }
    )


def test_a_view_s_newest_materialisation_comes_from_its_pipeline_and_its_lookups_and_is_kept(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    materialized = "last_materialized_timestamp_seconds:"
    assert evaluate(store, example_config) == {}  # never materialised: nothing to be stale
    ran = run("ok", timedelta(minutes=10), 100, 0)
    store_pipeline_runs(store, [ran, run("failed", timedelta(minutes=2), 100, 100)], lambda _p: (1.0,))
    assert evaluate(store, example_config)[materialized] == ran.started_at.timestamp() + 30
    served_at = utcnow() - timedelta(minutes=1)
    writer = feature_lookup_writer(lambda _s: (0.01,))
    writer.store(
        store, [[FeatureLookupRecord.model_validate(lookup("r1", materialized_at=served_at.isoformat()))]]
    )
    assert evaluate(store, example_config)[materialized] == served_at.timestamp()
    # Hours later, with no lookup or run since: the view keeps its time (and its alert fires).
    assert evaluate(store, example_config, end_in=timedelta(hours=3))[materialized] == served_at.timestamp()


def test_served_shares_count_nulls_absent_features_and_the_store_s_defaults() -> None:
    view = FeatureView(
        name=VIEW, features=["salary", "hyears", "car"], max_age="5m", default_values={"hyears": 0}
    )
    features = pd.DataFrame({"salary": [1.0, None, 3.0, None], "hyears": [0, 0, 5, None]})
    shares = {
        (m.metric, m.labels["feature"]): m.value for m in served_shares(features, view, "credit_approval")
    }
    assert shares == {
        ("null_share", "salary"): 0.5,
        ("null_share", "hyears"): 0.25,
        ("default_share", "hyears"): 0.5,
        ("null_share", "car"): 1.0,  # never sent
    }


def test_the_demo_s_feature_store_goes_stale_and_its_nulls_are_measured(
    service: LiveService, store: Store, example_config: WatchkeeperConfig
) -> None:
    """Demo traffic posts each prediction's lookup; its feature pipeline's runs stop at 150 (the
    schedule died), so the view's newest materialisation is the end of the run at 100."""
    injections = Injections(nulls_at=0, null_feature="salary", null_rate=0.5, stale_features_at=150)
    traffic = DemoTraffic(train_size=300, seed=4, injections=injections)
    feature_store = demo_feature_store(example_config, "credit_approval", 4, injections)
    assert feature_store is not None and feature_store.views == [VIEW]
    sent = run_demo_traffic(
        traffic,
        url=service.url,
        rate=0,
        count=250,
        batch_size=50,
        label_delay=0,
        pipeline="credit_feature_pipeline",
        feature_store=feature_store,
    )
    assert (sent.pipeline_runs, sent.feature_lookups) == (3, 250)
    assert samples(service.url, "ai_feature_store_lookup_latency_seconds_count") == {SERIES: 250}
    measured = evaluate(store, example_config)
    assert feature_store.materialized_at is not None
    assert measured["last_materialized_timestamp_seconds:"] == feature_store.materialized_at.timestamp()
    assert 0.35 < measured["null_share:salary"] < 0.65
    assert measured["null_share:age"] == 0 and measured["default_share:hyears"] == 0


def test_two_stores_going_stale_together_are_two_incidents(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    """Alike in every label but the store (the drill's stale view and its failed pipeline's)."""
    online = example_config.feature_stores[0]
    other = online.model_copy(update={"name": "fraud_online_features", "service": "model-registry"})
    config = example_config.model_copy(update={"feature_stores": [online, other]})
    labels = {"feature_view": VIEW, "service": "feature-store", "team": "data_engineering"}
    notify(
        store,
        alert("FeatureViewStale", timedelta(0), feature_store=STORE, **labels),
        alert("FeatureViewStale", timedelta(seconds=1), feature_store="fraud_online_features", **labels),
    )
    assert len(correlate_pending_alerts(store, config).opened) == 2


def test_slow_lookups_of_a_store_on_redis_short_of_memory_explain_the_model_s_latency(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    """The Redis alert names no store: its exporter's instance is the configured store's. A stale
    view of a store that serves none of the model's services is a problem of its own."""
    online = example_config.feature_stores[0].model_copy(update={"instance": "redis-online:9121"})
    config = example_config.model_copy(update={"feature_stores": [online]})
    notify(
        store,
        alert(
            "ModelInferenceLatencyHigh", timedelta(0), model_name="credit_approval", service="model-inference"
        ),
        alert("FeatureStoreLatencyHigh", timedelta(minutes=1), feature_store=STORE, feature_view=VIEW),
        alert("RedisMemoryHigh", timedelta(minutes=4), instance="redis-online:9121", job="redis"),
        alert("FeatureViewStale", timedelta(minutes=1), feature_store="another_store", feature_view="v"),
    )
    outcome = correlate_pending_alerts(store, config)
    assert outcome.correlated == 4
    (incident, members), *others = incidents(store)
    assert members == [
        ("ModelInferenceLatencyHigh", "opened"),
        ("FeatureStoreLatencyHigh", "causal"),
        ("RedisMemoryHigh", "causal"),
    ]
    assert incident.root_cause_service == "feature-store"
    # The store's two alerts are one subject, led by the one the causal rules make the cause of the
    # other: Redis short of memory, though the lookups were seen slowing first (its rule waits 5 min).
    assert incident.ranking[0]["alertname"] == "RedisMemoryHigh"
    assert any("explains 1 of 1" in reason for reason in incident.ranking[0]["reasons"])
    assert [m for _, m in others] == [[("FeatureViewStale", "opened")]]
