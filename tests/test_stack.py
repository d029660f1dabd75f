"""`watchkeeper up` and `down` with the real processes, on free ports and a temp home."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from prometheus_client.parser import text_string_to_metric_families

from watchkeeper.local.stack import PidRecord, free_ports

WATCHKEEPER = str(Path(sys.executable).parent / "watchkeeper")
pytestmark = pytest.mark.stack
SCHEDULED = ("collect-model-metrics", "evaluate-drift", "evaluate-data-quality", "pipeline-health")
EXPORTED = {
    "watchkeeper_predictions",
    "watchkeeper_feedback",
    "ai_model_accuracy_score",
    "ai_model_precision_score",
    "ai_model_recall_score",
    "ai_model_f1_score",
    "ai_model_false_positive_rate",
    "ai_model_inference_latency_seconds",
    "ai_model_inference_throughput_rps",
    "ai_model_error_rate",
    "ai_model_label_coverage_ratio",
    "ai_data_drift_share",
    "ai_data_quality_score",
    "ai_pipeline_processing_latency_seconds",
    "ai_pipeline_throughput_records_per_second",
    "ai_pipeline_error_rate",
    "ai_business_impact_score",
    "watchkeeper_evaluation_timestamp_seconds",
}


def wait_for(check, what: str, timeout: float = 180.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}")


def prometheus_has(url: str, query: str) -> bool:
    response = httpx.get(f"{url}/api/v1/query", params={"query": query})
    return response.status_code == 200 and bool(response.json()["data"]["result"])


def test_up_runs_the_stack_and_down_stops_exactly_it(tmp_path: Path) -> None:
    ports = free_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["WATCHKEEPER_HOME"] = str(tmp_path)
    options = [f"--{name}-port={port}" for name, port in ports.items()]
    cli = lambda *args: subprocess.run(  # noqa: E731
        [WATCHKEEPER, *args], capture_output=True, text=True, env=env, timeout=300
    )
    up = cli("up", *options)
    records = [PidRecord.load(p) for p in sorted((tmp_path / "run").glob("*.json"))]
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        service = f"http://127.0.0.1:{ports['service']}"
        prefect_api = f"http://127.0.0.1:{ports['prefect']}/api"
        assert f"http://127.0.0.1:{ports['prefect']}" in up.stdout
        assert httpx.get(f"{service}/healthz").json()["status"] == "ok"
        assert {r.name for r in records} == {
            "prefect-server",
            "notification-sink",
            "service",
            "executor",
            "alertmanager",
            "node-exporter",
            "prometheus",
        }

        deployments = httpx.post(f"{prefect_api}/deployments/filter", json={}).json()
        assert "collect-model-metrics" in {d["name"] for d in deployments}

        again = cli("up", *options)  # starts nothing twice
        assert again.returncode == 0 and again.stdout.count("already running") == len(records)

        traffic = cli(
            "demo-traffic", "--url", service, "--count", "1500", "--rate", "0", "--train-size", "500"
        )
        assert traffic.returncode == 0, traffic.stderr
        with temporary_settings({PREFECT_API_URL: prefect_api}):
            for name in SCHEDULED:
                run = run_deployment(f"{name}/{name}", timeout=180)
                assert run.state is not None and run.state.is_completed(), (name, run.state)
        families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{service}/metrics").text)}
        assert set(families) >= EXPORTED, EXPORTED - set(families)
        # The burst of 1,500 falls in one bucket, whose sample keeps 200: drift is tested with
        # p-values up to 1,000 rows, with distances (drift scores) above.
        assert {"ai_data_drift_p_value", "ai_data_drift_score"} & set(families)
        assert families["watchkeeper_executors_live"].samples[0].value == 1  # the stack's executor
        error_rates = {s.labels["pipeline_name"]: s.value for s in families["ai_pipeline_error_rate"].samples}
        assert error_rates["watchkeeper_metrics"] == 0.0  # its completed runs, read from the Prefect API

        artifacts = httpx.post(f"{prefect_api}/artifacts/filter", json={}).json()
        assert {"drift-credit-approval", "drift-credit-approval-report"} <= {a["key"] for a in artifacts}
        summary = next(a for a in artifacts if a["key"] == "drift-credit-approval")
        assert summary["type"] == "markdown" and "| salary |" in summary["data"]

        prometheus = f"http://127.0.0.1:{ports['prometheus']}"
        wait_for(
            lambda: prometheus_has(prometheus, "watchkeeper_predictions_total"),
            "Prometheus to scrape the service",
        )

        # Alertmanager -> webhook -> outbox -> handle-alerts run on Prefect -> one incident.
        alertmanager = f"http://127.0.0.1:{ports['alertmanager']}"
        firing = [
            {
                "labels": {"alertname": name, "severity": "warning", **labels},
                "annotations": {"summary": f"{name} (stack test)"},
            }
            for name, labels in (
                ("PipelineErrorRateHigh", {"pipeline_name": "credit_feature_pipeline", "team": "data"}),
                ("ModelAccuracyDegraded", {"model_name": "credit_approval", "team": "ml_engineering"}),
            )
        ]
        assert httpx.post(f"{alertmanager}/api/v2/alerts", json=firing).status_code == 200
        incidents = wait_for(
            lambda: [i for i in httpx.get(f"{service}/v1/incidents").json()["incidents"] if i["alerts"] == 2],
            "the alerts to become one incident",
        )
        assert incidents[0]["root_cause"]["subject"] == "feature-store"
        page = httpx.get(f"{service}/ui/incidents/{incidents[0]['id']}")  # loopback: no sign-in
        assert page.status_code == 200 and "ModelAccuracyDegraded" in page.text and "Acknowledge" in page.text
        # The incident is committed before its run finishes deciding remediation: wait for the run.
        completed = {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
        handled = wait_for(
            lambda: [
                r
                for r in httpx.post(f"{prefect_api}/flow_runs/filter", json=completed).json()
                if (r["idempotency_key"] or "").startswith("handle-alerts-")
            ],
            "a completed handle-alerts run",
        )
        assert all(r["parameters"]["notification_id"] for r in handled)

        status = cli("status")
        assert status.returncode == 0 and status.stdout.count(" yes ") >= 5
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert all(not r.alive() for r in records)
    assert not list((tmp_path / "run").glob("*.json"))
    for port in ports.values():
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/")
