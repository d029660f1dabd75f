"""Requests' traces: a prediction's trace id in the latency histogram's exemplars (on a real
Prometheus) and among an incident's example requests."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import yaml

from tasks.incidents import correlate_pending_alerts
from tests.conftest import LiveService, free_port
from tests.realstack import AlertingStack, WebhookRecorder, wait_until
from tests.standins import OtlpReceiver
from tests.test_alert_intake import NOTIFICATION
from tests.test_cli import run as run_cli
from tests.test_executor_process import BIN, environment
from tests.test_incidents import alert, notify
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.settings import DEFAULT_CONFIG
from watchkeeper.store import Store
from watchkeeper.store.incidents import incident_detail
from watchkeeper.store.samples import Sampling

OPENMETRICS = {"Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"}


def traced(i: int, at: datetime, latency: float, error: bool = False) -> dict:
    return {
        "model_name": "credit_approval",
        "model_version": "v1",
        "request_id": f"t-{i}",
        "timestamp": at.isoformat(),
        "features": {"salary": 1000.0 + i},
        "prediction": i % 2,
        "latency_seconds": latency,
        "error": error,
        "trace_id": f"{i + 1:032x}",
    }


def test_a_trace_id_is_32_hex_digits_and_not_all_zeros(
    example_config: WatchkeeperConfig, store: Store
) -> None:
    now = datetime.now(UTC)
    with LiveService(example_config, store) as service:
        for bad, reason in (
            ("0AF7651916CD43DD8448EB211C80319C", "should match pattern"),
            ("0" * 32, "all zeros"),
        ):
            record = {**traced(1, now, 0.1), "trace_id": bad}
            answer = httpx.post(f"{service.url}/v1/predictions", json=[record])
            assert answer.status_code == 422 and answer.json()["field"] == "trace_id", answer.text
            assert reason in answer.json()["error"]


def test_the_slow_bucket_s_exemplar_is_the_traced_request_on_a_real_prometheus(
    example_config: WatchkeeperConfig, store: Store, tmp_path: Path
) -> None:
    """OpenMetrics carries each bucket's latest traced request; the text format carries none; a real
    Prometheus with exemplar storage returns it for the bucket's series."""
    now = datetime.now(UTC)
    recorder = WebhookRecorder()
    with LiveService(example_config, store) as service:
        posted = [traced(i, now, 0.02) for i in range(5)] + [traced(9, now, 3.5)]
        assert httpx.post(f"{service.url}/v1/predictions", json=posted).status_code == 200
        openmetrics = httpx.get(f"{service.url}/metrics", headers=OPENMETRICS)
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.rstrip().endswith("# EOF") and openmetrics.text.count("# EOF") == 1
        slow = next(
            line
            for line in openmetrics.text.splitlines()
            if line.startswith("ai_model_inference_latency_seconds_bucket") and 'le="5.0"' in line
        )
        assert f'# {{trace_id="{9 + 1:032x}"}} 3.5' in slow
        assert "trace_id" not in httpx.get(f"{service.url}/metrics").text
        stack = AlertingStack(tmp_path, service.url, recorder.url)
        try:
            stack.wait_ready()
            query = {"query": "ai_model_inference_latency_seconds_bucket", "start": now.timestamp() - 60}
            found = wait_until(
                lambda: httpx.get(f"{stack.prometheus_url}/api/v1/query_exemplars", params=query).json()[
                    "data"
                ],
                "Prometheus to keep the exemplars",
            )
            kept = {
                (series["seriesLabels"]["le"], e["labels"]["trace_id"])
                for series in found
                for e in series["exemplars"]
            }
            assert ("5.0", f"{9 + 1:032x}") in kept
        finally:
            stack.stop()
            recorder.stop()


def test_an_incident_shows_its_model_s_slowest_and_failing_traced_requests(
    example_config: WatchkeeperConfig, store: Store, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with LiveService(example_config, store) as service:
        requests = [traced(i, now - timedelta(minutes=1), 0.01 * i, error=i in (3, 7)) for i in range(12)]
        requests.append({**traced(40, now - timedelta(hours=2), 9.0)})  # long before the incident
        requests.append({k: v for k, v in traced(41, now, 8.0).items() if k != "trace_id"})  # no trace
        assert httpx.post(f"{service.url}/v1/predictions", json=requests).status_code == 200
        notify(
            store,
            {
                **alert("ModelAccuracyDegraded", timedelta(0), model_name="credit_approval"),
                "startsAt": now.isoformat(),
            },
        )
        correlate_pending_alerts(store, example_config)
        [incident] = httpx.get(f"{service.url}/v1/incidents", headers={}).json()["incidents"]
        detail = httpx.get(f"{service.url}/v1/incidents/{incident['id']}").json()
    examples = detail["example_requests"]["credit_approval"]
    assert [e["trace_id"] for e in examples["slowest"]] == [f"{i + 1:032x}" for i in (11, 10, 9)]
    assert {e["request_id"] for e in examples["failing"]} == {"t-7", "t-3"}
    assert examples["slowest"][0]["url"] is None  # no traces.link configured
    # The CLI shows them, linked where the configuration names a trace page.
    config = yaml.safe_load(DEFAULT_CONFIG.read_text()) | {
        "traces": {"link": "http://jaeger:16686/trace/{trace_id}"}
    }
    (tmp_path / "watchkeeper.yaml").write_text(yaml.safe_dump(config))
    shown = run_cli(
        "--config",
        str(tmp_path / "watchkeeper.yaml"),
        "incidents",
        str(incident["id"]),
        home=tmp_path,
        WATCHKEEPER_DATABASE_URL=store.url.render_as_string(hide_password=False),
        COLUMNS="250",
    )
    assert shown.returncode == 0, shown.stderr
    assert "example requests" in shown.stdout and f"http://jaeger:16686/trace/{12:032x}" in shown.stdout
    assert json.dumps(
        incident_detail(store, incident["id"], Sampling.of(example_config))["example_requests"]
    ) == json.dumps(
        {
            "credit_approval": {
                kind: [{k: v for k, v in e.items() if k != "url"} for e in found]
                for kind, found in examples.items()
            }
        }
    )


def test_a_machine_s_calls_leave_no_fastapi_span_and_a_person_s_request_does(
    tmp_path: Path, store: Store
) -> None:
    """`watchkeeper serve` exporting to an OTLP receiver: an intake POST or a scrape is no trace of
    its own (tens a second at fifty models), a notification's trace is the one its handler starts,
    and an operator's read is a trace."""
    now, port = datetime.now(UTC), free_port()
    env = environment(tmp_path, store) | {"OTEL_BSP_SCHEDULE_DELAY": "50"}
    with OtlpReceiver() as receiver, (tmp_path / "service.log").open("wb") as log:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
        service = subprocess.Popen(
            [str(BIN / "watchkeeper"), "serve", "--port", str(port)], env=env, stderr=log
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: httpx.get(f"{url}/healthz").is_success, "the service")
            assert httpx.post(f"{url}/v1/predictions", json=[traced(1, now, 0.1)]).status_code == 200
            label = {"model_name": "credit_approval", "request_id": "t-1", "label": 1}
            assert httpx.post(f"{url}/v1/feedback", json=[label]).status_code == 200
            for path in ("/metrics", "/metrics/store", "/metrics/process"):
                assert httpx.get(f"{url}{path}").status_code == 200
            assert httpx.post(f"{url}/v1/alertmanager", json=NOTIFICATION).status_code == 200
            assert httpx.get(f"{url}/v1/incidents").status_code == 200
            wait_until(lambda: any("/v1/incidents" in s.name for s in receiver.spans), "the read's span")
        finally:
            service.terminate()
            service.wait(timeout=30)
    roots = {s.name for s in receiver.spans if s.parent_span_id is None}
    assert roots == {"alertmanager notification", "GET /v1/incidents"}, roots
