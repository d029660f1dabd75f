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
from sqlalchemy import func, select

from tests.conftest import free_port
from tests.test_service import predictions
from watchkeeper.stack import PidRecord
from watchkeeper.store import Store
from watchkeeper.store.schema import EvaluationResult

WATCHKEEPER = str(Path(sys.executable).parent / "watchkeeper")
pytestmark = pytest.mark.stack


def wait_for(check, what: str, timeout: float = 90.0):  # noqa: ANN001, ANN201
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
    ports = {name: free_port() for name in ("prefect", "service", "prometheus", "alertmanager")}
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
            "service",
            "deployments",
            "alertmanager",
            "prometheus",
        }

        deployments = httpx.post(f"{prefect_api}/deployments/filter", json={}).json()
        assert "collect-model-metrics" in {d["name"] for d in deployments}

        again = cli("up", *options)  # starts nothing twice
        assert again.returncode == 0 and again.stdout.count("already running") == 5

        httpx.post(f"{service}/v1/predictions", json=predictions(50)).raise_for_status()
        with temporary_settings({PREFECT_API_URL: prefect_api}):
            run = run_deployment("collect-model-metrics/collect-model-metrics", timeout=120)
        assert run.state is not None and run.state.is_completed(), run.state
        store = Store(f"sqlite:///{tmp_path / 'watchkeeper.db'}")
        with store.reading() as session:
            assert session.scalar(select(func.count()).select_from(EvaluationResult)) > 0
        store.dispose()

        prometheus = f"http://127.0.0.1:{ports['prometheus']}"
        wait_for(
            lambda: prometheus_has(prometheus, "watchkeeper_predictions_total"),
            "Prometheus to scrape the service",
        )

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
