"""Prometheus rules and Alertmanager routing, checked by the real promtool and amtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import seasonal
from watchkeeper import anomalies
from watchkeeper.local.ha import render_ha_prometheus_config
from watchkeeper.local.stack import INFRA, render_alertmanager_config, render_prometheus_config

RULES = INFRA / "prometheus" / "rules" / "watchkeeper-alerts.yml"
ANOMALY_RULES = INFRA / "prometheus" / "rules" / "watchkeeper-anomalies.yml"
SEASONAL_CASES = INFRA / "prometheus" / "tests" / "anomalies_test.yml"
ALERTMANAGER = INFRA / "alertmanager" / "alertmanager.yml"
SEED_ALERTS = {
    "ModelAccuracyDegraded",
    "ModelAccuracyCritical",
    "ModelInferenceLatencyHigh",
    "ModelInferenceLatencyCritical",
    "ModelThroughputLow",
    "DataQualityDegraded",
    "DataQualityCritical",
    "DataDriftDetected",
    "SevereDataDrift",
    "PipelineLatencyHigh",
    "PipelineErrorRateHigh",
    "PipelineErrorRateCritical",
    "BusinessImpactDecline",
    "BusinessImpactCritical",
}
ADDED_ALERTS = {"WatchkeeperEvaluationStale", "WatchkeeperTargetDown", "ModelLabelCoverageLow"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run 'make test' as root, or apt-get install prometheus "
            "prometheus-alertmanager"
        )
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60)


def alert_rules() -> list[dict]:
    groups = [g for path in (RULES, ANOMALY_RULES) for g in yaml.safe_load(path.read_text())["groups"]]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_seed_alert_and_the_operator_additions_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= SEED_ALERTS | ADDED_ALERTS


def test_every_alert_is_routable_and_explained() -> None:
    for rule in alert_rules():
        assert {"severity", "team", "service"} <= set(rule["labels"]), rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]


def test_latency_quantiles_come_from_bucket_rates() -> None:
    for rule in alert_rules():
        if "histogram_quantile" in rule["expr"]:
            assert "rate(" in rule["expr"] and "_bucket[" in rule["expr"] and "by (le," in rule["expr"], rule[
                "alert"
            ]


def test_rule_unit_tests_pass() -> None:
    files = sorted(set((INFRA / "prometheus" / "tests").glob("*.yml")) - {SEASONAL_CASES})
    result = run("promtool", "test", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files) == 7


def test_anomaly_rules_are_rendered_from_their_table() -> None:
    assert ANOMALY_RULES.read_text() == anomalies.render()
    assert run("promtool", "check", "rules", str(ANOMALY_RULES)).returncode == 0


@pytest.mark.slow
def test_anomaly_rules_fire_off_pattern_and_stay_quiet_through_seasons() -> None:
    """A compressed week and a day of seasonal series (tests/seasonal.py): off-pattern drops and
    rises fire within two minutes; daily troughs, a weekend, a holiday, growth, a nightly batch seen
    before and a tiny model do not. Eight simulated days take promtool a minute or two."""
    assert SEASONAL_CASES.read_text() == seasonal.document()
    result = subprocess.run(
        [tool("promtool"), "test", "rules", str(SEASONAL_CASES)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_alert_has_a_promtool_case() -> None:
    """Each alert rule is named in some `alert_rule_test` (firing or quiet) of infra/prometheus/tests."""
    cases = "\n".join(p.read_text() for p in (INFRA / "prometheus" / "tests").glob("*.yml"))
    untested = [r["alert"] for r in alert_rules() if f"alertname: {r['alert']}\n" not in cases]
    assert untested == []


def test_alertmanager_config_is_valid() -> None:
    result = run("amtool", "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (
            "severity=critical team=ml_engineering model_name=fraud_detection_v2",
            "watchkeeper,ml-team-critical",
        ),
        ("severity=warning team=ml_engineering model_name=fraud_detection_v2", "watchkeeper,default"),
        (
            "severity=critical team=platform_engineering model_name=fraud_detection_v2",
            "watchkeeper,platform-team-critical",
        ),
        ("severity=warning team=platform_engineering", "watchkeeper,default"),
        (
            "severity=critical team=data_engineering pipeline_name=fraud_pipeline",
            "watchkeeper,data-team-critical",
        ),
        ("severity=warning team=data_engineering pipeline_name=fraud_pipeline", "watchkeeper,data-team"),
        ("severity=critical team=product model_name=fraud_detection_v2", "watchkeeper,executive-alerts"),
        ("severity=warning team=product", "watchkeeper,product-team"),
        ("severity=info", "watchkeeper,default"),
    ],
)
def test_routes(labels: str, receivers: str) -> None:
    result = run(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={receivers}",
        *labels.split(),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_receiver_has_no_literal_secret() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    assert "smtp_auth_password" not in config["global"]
    for receiver in config["receivers"]:
        for slack in receiver.get("slack_configs", []):
            assert "api_url" not in slack and slack["api_url_file"].startswith("secrets/")
        for pagerduty in receiver.get("pagerduty_configs", []):
            assert "routing_key" not in pagerduty and pagerduty["routing_key_file"].startswith("secrets/")
    [watchkeeper] = [r for r in config["receivers"] if r["name"] == "watchkeeper"][0]["webhook_configs"]
    assert watchkeeper["send_resolved"] is True
    assert watchkeeper["http_config"]["authorization"]["credentials_file"] == "secrets/watchkeeper-token"


def test_rendered_configs_are_valid_and_keep_the_token_out_of_the_config(tmp_path: Path) -> None:
    prometheus = render_prometheus_config(
        tmp_path / "p", "127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003", "127.0.0.1:1004"
    )
    alertmanager = render_alertmanager_config(
        tmp_path / "a", "http://127.0.0.1:1001/v1/alertmanager", "t0ken"
    )
    assert run("promtool", "check", "config", str(prometheus)).returncode == 0
    assert run("amtool", "check-config", str(alertmanager)).returncode == 0
    assert "t0ken" not in alertmanager.read_text()
    token = tmp_path / "a" / "secrets" / "watchkeeper-token"
    assert token.read_text() == "t0ken" and token.stat().st_mode & 0o077 == 0
    rendered = yaml.safe_load(prometheus.read_text())
    jobs = {job["job_name"]: job["static_configs"][0] for job in rendered["scrape_configs"]}
    assert {name: job["targets"] for name, job in jobs.items()} == {
        "watchkeeper": ["127.0.0.1:1001"],
        "prometheus": ["127.0.0.1:1002"],
        "node": ["127.0.0.1:1004"],
    }
    # The host is named for topology.hosts, not for the exporter's port.
    assert jobs["node"]["labels"] == {"instance": "localhost"}
    # Without a node exporter (the tests' stacks), no job scrapes one.
    bare = render_prometheus_config(tmp_path / "q", "127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003")
    assert [job["job_name"] for job in yaml.safe_load(bare.read_text())["scrape_configs"]] == [
        "watchkeeper",
        "prometheus",
    ]


def test_every_runbook_url_has_a_section(example_config, store) -> None:  # noqa: ANN001
    import httpx

    from tests.conftest import LiveService

    with LiveService(example_config, store) as live:
        for rule in alert_rules():
            path = rule["annotations"]["runbook_url"].removeprefix("http://127.0.0.1:8765")
            response = httpx.get(f"{live.url}{path}")
            assert response.status_code == 200, rule["alert"]
            assert response.text.startswith(f"## {path.rsplit('/', 1)[1]}\n")
        assert httpx.get(f"{live.url}/runbooks/nope").status_code == 404


def test_the_ha_pair_drops_its_replica_label_and_scrapes_the_store_once(tmp_path: Path) -> None:
    prometheus = render_ha_prometheus_config(
        tmp_path / "p",
        replica="2",
        load_balanced="127.0.0.1:1001",
        services=["127.0.0.1:1011", "127.0.0.1:1012"],
        prometheus="127.0.0.1:1002",
        alertmanagers=["127.0.0.1:1003", "127.0.0.1:1004"],
        node_exporter="127.0.0.1:1005",
    )
    checked = run("promtool", "check", "config", str(prometheus))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rendered = yaml.safe_load(prometheus.read_text())
    assert rendered["global"]["external_labels"] == {"replica": "2"}
    assert rendered["alerting"]["alert_relabel_configs"] == [{"action": "labeldrop", "regex": "replica"}]
    assert rendered["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "127.0.0.1:1003",
        "127.0.0.1:1004",
    ]
    jobs = {job["job_name"]: job for job in rendered["scrape_configs"]}
    assert jobs["watchkeeper"]["metrics_path"] == "/metrics/store"
    assert jobs["watchkeeper"]["static_configs"][0]["targets"] == ["127.0.0.1:1001"]
    assert jobs["watchkeeper-replicas"]["metrics_path"] == "/metrics/process"
    assert jobs["watchkeeper-replicas"]["static_configs"][0]["targets"] == [
        "127.0.0.1:1011",
        "127.0.0.1:1012",
    ]
    assert jobs["node"]["static_configs"][0] == {
        "targets": ["127.0.0.1:1005"],
        "labels": {"instance": "localhost"},
    }


def test_the_load_balancer_config_is_valid_and_names_every_replica(tmp_path: Path) -> None:
    from watchkeeper.local.ha import HaStack
    from watchkeeper.local.stack import Ports
    from watchkeeper.settings import Settings

    stack = HaStack(Settings(home=tmp_path), Ports(14200, 18765, 19090, 19093, 19601))
    config = tmp_path / "haproxy.cfg"
    config.write_text(stack.haproxy_config())
    checked = run("haproxy", "-c", "-f", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = config.read_text()
    for port in (*stack.topology.prefect_apis, *stack.topology.services):
        assert f"127.0.0.1:{port} check" in text
    assert "bind 127.0.0.1:14200" in text and "bind 127.0.0.1:18765" in text
