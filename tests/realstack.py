"""Real Prometheus and Alertmanager processes and a webhook recorder, on free loopback ports.

Used by the alerting tests and by benchmarks/detect.py. Each process is started in a temp dir and
stopped by its own PID.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from tasks.metrics import Window, measure_quality, record_results
from tests.conftest import free_port
from watchkeeper.config import Model
from watchkeeper.intake.aggregates import bucket_start
from watchkeeper.local.stack import (
    EXEMPLAR_STORAGE,
    node_exporter_argv,
    render_alertmanager_config,
    render_prometheus_config,
)
from watchkeeper.store import Store


def wait_until(check: Callable[[], Any], what: str, timeout: float = 120.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except httpx.HTTPError:
            result = None
        if result:
            return result
        time.sleep(every)
    raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")


class Process:
    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        if shutil.which(argv[0]) is None:
            raise RuntimeError(
                f"{argv[0]} is not installed (apt-get install prometheus prometheus-alertmanager)"
            )
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Notification:
    received_at: float
    payload: dict[str, Any]


@dataclass
class WebhookRecorder:
    """An HTTP server recording every POST body (Alertmanager's webhook) with its arrival time."""

    port: int = field(default_factory=free_port)
    notifications: list[Notification] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.authorization.append(self.headers.get("Authorization"))
                recorder.notifications.append(Notification(time.monotonic(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/alertmanager"

    def alerts(self, alertname: str, status: str, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        return [
            (n.received_at, alert)
            for n in list(self.notifications)
            if n.received_at >= since
            for alert in n.payload["alerts"]
            if alert["labels"].get("alertname") == alertname and alert["status"] == status
        ]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class AlertingStack:
    """Prometheus scraping a Watchkeeper service, evaluating the shipped rules, sending to Alertmanager."""

    def __init__(
        self,
        folder: Path,
        service_url: str,
        webhook_url: str,
        token: str | None = None,
        node_exporter: bool = False,
    ) -> None:
        """With `node_exporter`, this machine's node exporter too, as `watchkeeper up` runs it."""
        self.folder = folder
        self.prometheus_port, self.alertmanager_port = free_port(), free_port()
        self.node_exporter_url = f"http://127.0.0.1:{free_port()}" if node_exporter else None
        self.prometheus_url = f"http://127.0.0.1:{self.prometheus_port}"
        self.alertmanager_url = f"http://127.0.0.1:{self.alertmanager_port}"
        am_config = render_alertmanager_config(folder / "alertmanager", webhook_url, token)
        prom_config = render_prometheus_config(
            folder / "prometheus",
            service=service_url.removeprefix("http://"),
            prometheus=f"127.0.0.1:{self.prometheus_port}",
            alertmanager=f"127.0.0.1:{self.alertmanager_port}",
            node_exporter=self.node_exporter_url.removeprefix("http://") if self.node_exporter_url else None,
        )
        self.node_exporter = (
            Process(
                node_exporter_argv(self.node_exporter_url.removeprefix("http://")),
                folder / "node-exporter.log",
            )
            if self.node_exporter_url
            else None
        )
        self.scrape_interval = yaml.safe_load(prom_config.read_text())["scrape_configs"][0]["scrape_interval"]
        self.alertmanager = Process(
            [
                "prometheus-alertmanager",
                f"--config.file={am_config}",
                f"--storage.path={folder / 'alertmanager' / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
                "--cluster.listen-address=",
            ],
            folder / "alertmanager.log",
        )
        self.prometheus = Process(
            [
                "prometheus",
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={folder / 'prometheus' / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
                EXEMPLAR_STORAGE,
            ],
            folder / "prometheus.log",
        )

    def wait_ready(self) -> None:
        """Both answer, Prometheus has found Alertmanager and has scraped Watchkeeper once."""
        for url in (self.alertmanager_url, self.prometheus_url):
            wait_until(lambda url=url: httpx.get(f"{url}/-/ready").status_code == 200, f"{url} ready")
        wait_until(
            lambda: httpx.get(f"{self.prometheus_url}/api/v1/alertmanagers").json()["data"][
                "activeAlertmanagers"
            ],
            "Prometheus to discover Alertmanager",
        )
        wait_until(lambda: self.query('up{job="watchkeeper"} == 1'), "the first scrape of Watchkeeper")
        if self.node_exporter is not None:
            wait_until(lambda: self.query('up{job="node"} == 1'), "the first scrape of the node exporter")

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr})
        body = response.json()
        if body.get("status") != "success":
            raise ValueError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def stop(self) -> None:
        self.prometheus.stop()
        self.alertmanager.stop()
        if self.node_exporter is not None:
            self.node_exporter.stop()


def post_labelled_predictions(
    service_url: str, model: str, start: datetime, n: int, correct: bool, tag: str
) -> None:
    """`n` predictions through the intake, then their labels: all right, or all wrong (bad labels)."""
    predictions = [
        {
            "model_name": model,
            "model_version": "v1",
            "request_id": f"{tag}-{i}",
            "timestamp": (start + timedelta(milliseconds=10 * i)).isoformat(),
            "features": {"salary": 1000.0 + i},
            "prediction": i % 2,
            "latency_seconds": 0.02,
        }
        for i in range(n)
    ]
    labels = [
        {"model_name": model, "request_id": f"{tag}-{i}", "label": i % 2 if correct else 1 - i % 2}
        for i in range(n)
    ]
    httpx.post(f"{service_url}/v1/predictions", json=predictions, timeout=30).raise_for_status()
    httpx.post(f"{service_url}/v1/feedback", json=labels, timeout=30).raise_for_status()


def collect_quality(store: Store, model: Model, window: Window) -> float | None:
    """What collect-model-metrics does for quality, on an explicit window (its start moved back to
    its bucket's, as the flow does); returns the accuracy."""
    window = Window(bucket_start(window.start, 60), window.end)
    results = measure_quality(store, model, window)
    record_results(store, model, {window: results}, None)
    quality = results["model_quality"].get(model.version, [])
    return next((m.value for m in quality if m.metric == "accuracy"), None)


@contextmanager
def alertmanager_at(folder: Path) -> Iterator[str]:
    """Debian's Alertmanager on a free loopback port, routing to nowhere: a test posts alerts to it
    and reads from it (Watchkeeper learns them as the webhook would tell it)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "alertmanager.yml"
    config.write_text(yaml.safe_dump({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}))
    port = free_port()
    process = Process(
        [
            "prometheus-alertmanager",
            f"--config.file={config}",
            f"--storage.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        folder / "alertmanager.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/-/ready").status_code == 200, "Alertmanager ready")
        yield url
    finally:
        process.stop()
