"""The fault drill's set-up: what it derives from the example configuration, and how it attributes alerts."""

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from tasks.incidents import correlate_pending_alerts
from tests.test_incidents import alert, notify
from watchkeeper.config import WatchkeeperConfig, load_config
from watchkeeper.evaluation.drill import (
    FAULTS,
    Drill,
    DrillOptions,
    Subject,
    clean_subjects,
    drill_config,
    owner,
)
from watchkeeper.local.demo import DemoFeatureStore, DemoTraffic
from watchkeeper.settings import DEFAULT_CONFIG
from watchkeeper.store import Store


def test_each_subject_gets_its_own_model_dataset_pipeline_and_services(tmp_path) -> None:  # noqa: ANN001
    example = yaml.safe_load(DEFAULT_CONFIG.read_text())
    derived = drill_config(
        example, ["null_burst", "clean"], DrillOptions(rate=6, day_minutes=0).min_throughput_rps
    )
    (tmp_path / "drill.yaml").write_text(yaml.safe_dump(derived))
    config: WatchkeeperConfig = load_config(tmp_path / "drill.yaml", home=tmp_path)
    template = load_config(DEFAULT_CONFIG, home=tmp_path).models[0]
    assert [m.name for m in config.models] == ["drill_null_burst", "drill_clean"]
    for model in config.models:
        assert model.features == template.features and model.windows == template.windows
        assert model.reference == template.reference
        assert model.thresholds.min_throughput_rps == 3
        assert model.thresholds.accuracy_critical == template.thresholds.accuracy_critical
    assert config.topology.services["drill_null_burst-credit-approval-api"] == [
        "drill_null_burst-model-server",
        "drill_null_burst-feature-store",
    ]
    assert {(d.name, d.model, d.pipeline) for d in config.datasets} == {
        ("drill_null_burst_data", "drill_null_burst", "drill_null_burst_pipeline"),
        ("drill_clean_data", "drill_clean", "drill_clean_pipeline"),
    }
    assert config.remediation.playbooks == load_config(DEFAULT_CONFIG, home=tmp_path).remediation.playbooks
    stores = {f.name: f for f in config.feature_stores}
    assert set(stores) == {"drill_null_burst_credit_online_features", "drill_clean_credit_online_features"}
    view = stores["drill_null_burst_credit_online_features"].views[0]
    assert (view.models, view.materialized_by) == (["drill_null_burst"], "drill_null_burst_pipeline")
    assert stores["drill_null_burst_credit_online_features"].service == "drill_null_burst-feature-store"


def test_alerts_belong_to_the_subject_they_name() -> None:
    traffic = DemoTraffic(train_size=200)
    burst, clean = (
        Subject("drill_null_burst", FAULTS["null_burst"], traffic),
        Subject("drill_clean", None, traffic),
    )
    burst.feature_store = DemoFeatureStore("drill_null_burst_online", ["profile"], seed=1)
    clean.feature_store = DemoFeatureStore("drill_clean_online", ["profile"], seed=1)
    assert owner({"dataset_name": "drill_null_burst_data"}, [burst, clean]) is burst
    assert owner({"pipeline_name": "drill_clean_pipeline"}, [burst, clean]) is clean
    assert owner({"feature_store": "drill_clean_online"}, [burst, clean]) is clean
    assert owner({"feature_store": "drill_null_burst_online"}, [burst, clean]) is burst
    assert owner({"alertname": "WatchkeeperTargetDown"}, [burst, clean]) is None


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="faults: unknown nope"):
        DrillOptions(faults=("nope",))
    with pytest.raises(ValueError, match="rate: expected 5 to 100"):
        DrillOptions(rate=2)
    with pytest.raises(ValueError, match="amplitude"):
        DrillOptions(day_amplitude=1.0)
    # The floor sits at half the daily trough's rate, so the cycle itself never reads as low.
    assert DrillOptions(rate=10, day_amplitude=0.3).min_throughput_rps == pytest.approx(3.5)
    assert DrillOptions().inject_after >= 600  # after the anomaly rules' warm-up
    assert set(DrillOptions().faults) == {
        "concept_drift",
        "covariate_drift",
        "null_burst",
        "missing_feature",
        "latency_spike",
        "error_burst",
        "prediction_collapse",
        "traffic_drop",
        "pipeline_failure",
        "business_decline",
        "stale_features",
        "feature_store_slow",
        "regression_bias",
        "ranking_collapse",
        "popularity_shift",
        "embedding_drift",
    }


def test_each_kinds_faults_run_on_a_copy_of_that_kinds_model_beside_a_clean_one(tmp_path: Path) -> None:
    example = yaml.safe_load(DEFAULT_CONFIG.read_text())
    faults = ("null_burst", "regression_bias", "popularity_shift", "ranking_collapse")
    names = [*faults, *clean_subjects(faults)]
    assert names[len(faults) :] == ["clean", "clean_demand_forecast", "clean_product_recommendations"]
    (tmp_path / "drill.yaml").write_text(
        yaml.safe_dump(drill_config(example, names, DrillOptions().min_throughput_rps))
    )
    config = load_config(tmp_path / "drill.yaml", home=tmp_path)
    tasks = {m.name: m.task for m in config.models}
    assert tasks == {
        "drill_null_burst": "binary",
        "drill_regression_bias": "regression",
        "drill_popularity_shift": "ranking",
        "drill_ranking_collapse": "ranking",
        "drill_clean": "binary",
        "drill_clean_demand_forecast": "regression",
        "drill_clean_product_recommendations": "ranking",
    }
    assert (
        config.model("drill_ranking_collapse").ranking
        == load_config(DEFAULT_CONFIG).model("product_recommendations").ranking
    )


def test_the_drill_times_each_subjects_first_expected_alert_and_its_incident(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    traffic = DemoTraffic(train_size=200)
    burst = Subject("drill_null_burst", FAULTS["null_burst"], traffic)
    clean = Subject("drill_clean", None, traffic)
    notify(
        store,
        alert("DataRecordsFailingChecksCritical", timedelta(0), dataset_name="drill_null_burst_data"),
        alert("PipelineErrorRateHigh", timedelta(seconds=30), pipeline_name="drill_null_burst_pipeline"),
        alert("WatchkeeperTargetDown", timedelta(seconds=40)),
    )
    correlate_pending_alerts(store, example_config)
    drill = Drill(DrillOptions(), Path("unused"), print)
    drill._read_alerts(store, [burst, clean])
    drill._read_alerts(store, [burst, clean])  # polled again: the first arrival stays
    assert set(burst.alerts) == {"DataRecordsFailingChecksCritical", "PipelineErrorRateHigh"}
    assert clean.alerts == {} and set(drill.unattributed) == {"WatchkeeperTargetDown"}
    traffic.injected_at = burst.alerts["DataRecordsFailingChecksCritical"] - timedelta(seconds=12)
    result = drill._result(store, burst)
    assert result["detected"] and result["seconds_to_webhook"] == 12.0
    assert result["seconds_to_incident"] is not None and result["seconds_to_incident"] >= 12.0
    assert result["root_cause"] is not None
