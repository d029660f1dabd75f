"""The model report reads each metric beside its expected band back from a real Prometheus: two
hours of recorded band series backfilled with promtool, then queried as the report does."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tasks.anomaly_bands import expected_bands, step_seconds
from tasks.report_delivery import produce_report
from tests import test_model_report
from tests.conftest import free_port
from tests.realstack import Process, wait_until
from watchkeeper.config import WatchkeeperConfig

MODEL = 'model_name="credit_approval"'
# The model report's own hour of traffic, on each back end (tests/test_model_report.py).
reported = test_model_report.reported
DIP_MINUTES = 10


def openmetrics(end: datetime) -> str:
    """Throughput near 10 rps expected, its lower edge at 6; the last minute dips to 2 rps for ten
    minutes half an hour before `end`."""
    lines = []
    minutes = range(120, 0, -1)
    at = [end - timedelta(minutes=m) for m in minutes]
    dip = {t for t in at if end - timedelta(minutes=40) <= t < end - timedelta(minutes=40 - DIP_MINUTES)}
    for part, value in (("rate1m", None), ("expected", 10.0), ("lower", 6.0)):
        name = f"ai_anomaly:throughput_rps:{part}"
        lines.append(f"# TYPE {name} gauge")
        for t in at:
            sample = value if value is not None else (2.0 if t in dip else 10.0)
            lines.append(f"{name}{{{MODEL}}} {sample} {t.timestamp():.0f}")
    return "\n".join([*lines, "# EOF", ""])


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, datetime]]:
    folder: Path = tmp_path_factory.mktemp("bands")
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    (folder / "series.om").write_text(openmetrics(end))
    data = folder / "data"
    created = subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(folder / "series.om"), str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    (folder / "prometheus.yml").write_text("global: {scrape_interval: 15s}\n")
    port = free_port()
    prometheus = Process(
        [
            "prometheus",
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        folder / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/-/ready").status_code == 200, "Prometheus ready")
        yield url, end
    finally:
        prometheus.stop()


def test_the_report_shows_throughput_beside_its_band_and_time_beyond_it(
    backfilled: tuple[str, datetime], example_config: WatchkeeperConfig
) -> None:
    url, end = backfilled
    model = example_config.model("credit_approval")
    assert model is not None
    bands = expected_bands(url, example_config, model, end - timedelta(hours=2), end)
    assert bands["available"] and bands["step_seconds"] == 60
    [throughput] = bands["metrics"]  # the other metrics recorded nothing here
    assert throughput["series"] == {"model_name": "credit_approval"}  # the model's, every version
    assert throughput["minutes_beyond"] == DIP_MINUTES
    assert (throughput["last"], throughput["last_expected"]) == (10.0, 10.0)
    assert min(throughput["value"]) == 2.0 and set(throughput["edge"]) == {6.0}


def test_the_report_page_draws_each_metric_beside_its_band(
    backfilled: tuple[str, datetime], reported: tuple, tmp_path: Path
) -> None:
    url, _ = backfilled
    store, config, period = reported
    built = produce_report(store, config, config.models[0], period, tmp_path, None, None, url)
    row = "| Throughput | credit_approval | 10.000 rps | 10.000 rps | 10 min | ModelThroughputAnomalous |"
    assert "## Against its normal" in built.markdown and row in built.markdown
    assert 'id="bands"' in built.html and "edge of the band" in built.html
    assert built.summary["bands"]["metrics"][0]["minutes_beyond"] == DIP_MINUTES


def test_without_a_prometheus_the_report_says_why(example_config: WatchkeeperConfig) -> None:
    model = example_config.model("credit_approval")
    assert model is not None
    end = datetime.now(UTC)
    unset = expected_bands(None, example_config, model, end - timedelta(days=1), end)
    assert unset == {"available": False, "reason": "no Prometheus to ask (set WATCHKEEPER_PROMETHEUS_URL)"}
    gone = expected_bands(
        f"http://127.0.0.1:{free_port()}", example_config, model, end - timedelta(days=1), end
    )
    assert not gone["available"] and "did not answer" in gone["reason"]
    assert step_seconds(end - timedelta(days=1), end) == 360  # a day in 240 points
