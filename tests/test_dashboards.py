"""Every Grafana panel's PromQL runs on a real Prometheus scraping a real Watchkeeper."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tasks.metrics import Measurement, Window, save_results
from tests.conftest import BACK_ENDS, LiveService, save_predictions, store_feedback, store_url
from tests.realstack import AlertingStack, WebhookRecorder
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.intake.records import (
    FeatureLookupRecord,
    FeedbackRecord,
    PipelineRunRecord,
    PredictionRecord,
)
from watchkeeper.local.stack import INFRA
from watchkeeper.store import Store
from watchkeeper.store.intake import feature_lookup_writer, store_pipeline_runs

DASHBOARDS = sorted((INFRA / "grafana" / "dashboards").glob("*.json"))
PROMETHEUS_OWN = {"ALERTS", "ALERTS_FOR_STATE", "up"}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}


def seed(store: Store) -> None:
    now = datetime.now(UTC)
    window = Window(now - timedelta(minutes=5), now)
    save_predictions(
        store,
        [
            PredictionRecord(
                model_name="credit_approval",
                model_version="v1",
                request_id=f"r{i}",
                timestamp=now,
                features={"salary": 1.0},
                prediction=1,
                latency_seconds=0.01 * i,
            )
            for i in range(20)
        ],
    )
    store_feedback(store, [FeedbackRecord(model_name="credit_approval", request_id="r1", label=1)])
    store_pipeline_runs(
        store,
        [
            PipelineRunRecord(
                pipeline_name="credit_feature_pipeline",
                run_id="p1",
                started_at=now,
                duration_seconds=3,
                records=10,
                errors=1,
            )
        ],
        duration_buckets=lambda _name: (1.0, 10.0),
    )
    metrics = {
        "model_quality": [
            "accuracy",
            "precision",
            "recall",
            "f1",
            "false_positive_rate",
            "label_coverage_ratio",
        ],
        "model_traffic": ["throughput_rps", "error_rate"],
        "model_segments": [],
    }
    segment = {"segment_column": "car", "segment": "7"}
    extra = {
        "model_quality": [
            Measurement("business_impact", 10.0, {"metric_type": "loan_value_approved"}),
            Measurement("estimated_accuracy", 0.88),
            # The other kinds' scores (multiclass, regression, ranking), on the same model here.
            Measurement("f1_macro", 0.8),
            Measurement("class_recall", 0.7, {"class": "a"}),
            Measurement("mae", 1.2),
            Measurement("mean_error", -0.1),
            Measurement("ndcg_at_k", 0.4, {"k": "5"}),
            Measurement("hit_rate_at_k", 0.6, {"k": "5"}),
            Measurement("recommended_items_drift", 0.05),
            Measurement("popularity_bias", 0.05),
            Measurement("catalogue_coverage", 0.9),
        ],
        "model_traffic": [Measurement("prediction_share", 1.0, {"prediction_class": "1"})],
        "model_segments": [
            Measurement(name, 0.5, segment)
            for name in ("segment_positive_rate", "segment_reference_positive_rate", "segment_accuracy")
        ],
    }
    for kind, names in metrics.items():
        measurements = [Measurement(n, 0.9) for n in names] + extra[kind]
        save_results(store, kind, "credit_approval", "v1", window, measurements)
    save_results(
        store,
        "drift",
        "credit_approval",
        "",
        window,
        [
            Measurement("drift_score", 0.1, {"feature_name": "salary"}),
            Measurement("drift_p_value", 0.5, {"feature_name": "age"}),
            Measurement("drift_detected", 0.0, {"feature_name": "salary"}),
            Measurement("drift_share", 0.0),
            Measurement("prediction_drift_score", 0.01),
        ],
    )
    save_results(
        store,
        "data_quality",
        "credit_applications",
        "",
        window,
        [
            Measurement("quality_score", 0.95, {"pipeline_name": "credit_feature_pipeline"}),
            Measurement(
                "check_failure_share",
                0.05,
                {"pipeline_name": "credit_feature_pipeline", "check": "missing", "column": "salary"},
            ),
        ],
    )
    save_results(
        store,
        "pipeline",
        "credit_feature_pipeline",
        "",
        window,
        [
            Measurement("throughput_records_per_second", 3.0),
            Measurement("error_rate", 0.1),
        ],
    )
    view = {"feature_view": "applicant_profile"}
    lookup = FeatureLookupRecord(
        feature_store="credit_online_features",
        feature_view="applicant_profile",
        request_id="r1",
        timestamp=now,
        latency_seconds=0.004,
        keys=2,
        errors=1,
        materialized_at=now,
    )
    feature_lookup_writer(lambda _store: (0.01,)).store(store, [[lookup]])
    served = {**view, "model_name": "credit_approval", "feature": "hyears"}
    save_results(
        store,
        "feature_store",
        "credit_online_features",
        "",
        window,
        [
            Measurement("last_materialized_timestamp_seconds", now.timestamp(), view),
            Measurement("null_share", 0.1, served),
            Measurement("default_share", 0.2, served),
        ],
    )


@pytest.fixture(scope="module", params=BACK_ENDS)
def live(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    example_config: WatchkeeperConfig,
) -> Iterator[tuple]:
    """The service on each back end, scraped by a real Prometheus."""
    folder = tmp_path_factory.mktemp("dashboards")
    store = Store(store_url(request.param, folder, request))
    store.upgrade()
    seed(store)
    recorder = WebhookRecorder()
    with LiveService(example_config, store) as service:
        stack = AlertingStack(folder, service.url, recorder.url, node_exporter=True)
        try:
            stack.wait_ready()
            yield service, stack
        finally:
            stack.stop()
            recorder.stop()
            store.dispose()


def exported_names(*metrics_urls: str) -> set[str]:
    names = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    for url in metrics_urls:
        for family in text_string_to_metric_families(httpx.get(url).text):
            names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    bare = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", bare):
        following = bare[match.end() :].lstrip()
        if not following.startswith("(") and match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def recorded_names() -> set[str]:
    """Series the shipped rules record (the anomaly bands the dashboards draw)."""
    files = (INFRA / "prometheus" / "rules").glob("*.yml")
    groups = [g for path in files for g in yaml.safe_load(path.read_text())["groups"]]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def panels() -> list[tuple[str, str, str]]:
    found = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                found.append((path.stem, panel["title"], target["expr"]))
    return found


def test_the_six_dashboards_are_provisioned() -> None:
    assert {p.stem for p in DASHBOARDS} == {
        "model-performance",
        "data-pipeline-health",
        "drift",
        "alerts",
        "incidents-and-remediation",
        "hosts",
    }
    provider = (INFRA / "grafana" / "provisioning" / "dashboards" / "watchkeeper.yml").read_text()
    assert "type: file" in provider
    datasource = (INFRA / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "uid: watchkeeper-prometheus" in datasource
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == "watchkeeper-prometheus", (path.stem, panel["title"])


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model_name) (rate(ai_x_bucket{a="b(c)"}[5m]))) > 1 and on(m) up'
    )
    assert metric_names(expr) == {"ai_x_bucket", "up"}


@pytest.mark.parametrize(("dashboard", "title", "expr"), panels())
def test_panel_query_runs_on_real_prometheus(live, dashboard: str, title: str, expr: str) -> None:  # noqa: ANN001
    service, stack = live
    query = expr.replace("$model", ".*").replace("$pipeline", ".*").replace("$host", ".*")
    stack.query(query)  # raises with Prometheus's error message on a bad query
    exported = exported_names(f"{service.url}/metrics", f"{stack.node_exporter_url}/metrics")
    unknown = metric_names(query) - exported - PROMETHEUS_OWN - recorded_names()
    assert not unknown, (
        f"{dashboard} / {title}: {sorted(unknown)} exported by neither Watchkeeper nor the node exporter, "
        "nor recorded by the shipped rules"
    )


def test_template_variables_resolve(live) -> None:  # noqa: ANN001
    _, stack = live
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text())["templating"]["list"]:
            match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"])
            assert match, variable
            assert stack.query(match.group(1)), f"{path.stem}: ${variable['name']} has no values"
