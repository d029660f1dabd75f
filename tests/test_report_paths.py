"""The model report through every path that starts it, on `watchkeeper up`: a run that Prefect's
scheduler created and the executor ran, a Quick Run, and the CLI with Typer's own parsing of `Z`,
`+00:00` and `+02:00`. Predictions are POSTed with offsets; each report must count every one of the
period's predictions, each in the chart bin of its UTC time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.conftest import BACK_ENDS, store_url
from tests.realstack import wait_until
from tests.timepaths import assert_bins_match, prediction_bodies, times_before, written
from watchkeeper.local.stack import free_ports
from watchkeeper.settings import DEFAULT_CONFIG
from watchkeeper.times import as_utc, utcnow

WATCHKEEPER = str(Path(sys.executable).parent / "watchkeeper")
pytestmark = pytest.mark.stack
# Long enough for the predictions to be posted before the scheduled run, however slow `up` was.
FIRST_REPORT_AFTER = timedelta(seconds=90)


def reports(service: str) -> list[dict[str, Any]]:
    return httpx.get(f"{service}/v1/reports", params={"model": "credit_approval"}).json()["reports"]


def scheduled_report_run(prefect_api: str) -> dict[str, Any] | None:
    runs = httpx.post(
        f"{prefect_api}/flow_runs/filter",
        json={
            "deployments": {"name": {"any_": ["model-report"]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": 1,
        },
    ).json()
    return runs[0] if runs else None


@pytest.mark.parametrize("back_end", BACK_ENDS)
def test_the_scheduled_run_a_quick_run_and_the_cli_each_report_every_prediction_at_its_utc_time(
    tmp_path: Path, back_end: str, request: pytest.FixtureRequest
) -> None:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["reports"] |= {"first_after": f"{FIRST_REPORT_AFTER.seconds}s", "period": "1h"}
    (tmp_path / "watchkeeper.yaml").write_text(yaml.safe_dump(config))
    ports = free_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")} | {
        "WATCHKEEPER_HOME": str(tmp_path),
        "WATCHKEEPER_CONFIG": str(tmp_path / "watchkeeper.yaml"),
    }
    if back_end == "postgresql":  # on SQLite, the home's own store, as `make up` has it
        env["WATCHKEEPER_DATABASE_URL"] = store_url(back_end, tmp_path, request)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([WATCHKEEPER, *args], capture_output=True, text=True, env=env, timeout=300)

    up = cli("up", *(f"--{name}-port={port}" for name, port in ports.items()))
    service = f"http://127.0.0.1:{ports['service']}"
    prefect_api = f"http://127.0.0.1:{ports['prefect']}/api"
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        scheduled = wait_until(lambda: scheduled_report_run(prefect_api), "the scheduled model-report run")
        end = as_utc(scheduled["expected_start_time"]).replace(second=0, microsecond=0)
        times = times_before(end)
        outside = [end, end + timedelta(hours=2)]  # at and after the period's end: not in it
        posted = httpx.post(f"{service}/v1/predictions", json=prediction_bodies(times + outside, "tz"))
        assert posted.status_code == 200, posted.text
        assert utcnow() < as_utc(scheduled["expected_start_time"])  # posted before the run was due

        # 1. The run Prefect's scheduler created, executed by the executor.
        [first] = wait_until(lambda: reports(service), "the scheduled report", timeout=300)
        assert as_utc(first["period_end"]) == end
        assert_bins_match(first["summary"], times + outside, end)
        assert httpx.get(f"{service}/v1/reports/{first['id']}").text.startswith("<!DOCTYPE html>")

        # 2. A Quick Run: the deployment's defaults, its period up to the run's own scheduled time.
        with temporary_settings({PREFECT_API_URL: prefect_api}):
            run = run_deployment("model-report/model-report", timeout=180)
        assert run.state is not None and run.state.is_completed(), run.state
        quick = max(reports(service), key=lambda r: r["id"])
        assert_bins_match(quick["summary"], times + outside, as_utc(quick["period_end"]))

        # 3. The CLI: Typer parses the options; the same period as the scheduled run keeps its id.
        for start_text, end_text in (
            (written(end - timedelta(hours=1), "Z"), written(end, timedelta(hours=2))),
            (written(end - timedelta(hours=1), timedelta(0)), written(end, "Z")),
        ):
            html = tmp_path / "report.html"
            html.unlink(missing_ok=True)
            ran = cli(
                "model-report", "credit_approval", "--start", start_text, "--end", end_text,
                "--html", str(html), "--json",
            )  # fmt: skip
            assert ran.returncode == 0, ran.stdout + ran.stderr
            printed = json.loads(ran.stdout)
            assert printed["id"] == first["id"]
            assert_bins_match(printed["summary"], times + outside, end)
            assert html.read_text().startswith("<!DOCTYPE html>")
        # Recorded on the stack's own Prefect server, not a throwaway one.
        cli_runs = httpx.post(
            f"{prefect_api}/flow_runs/filter",
            json={
                "flow_runs": {"deployment_id": {"is_null_": True}},
                "flows": {"name": {"any_": ["model-report"]}},
            },
        ).json()
        assert len(cli_runs) == 2 and all(r["state_type"] == "COMPLETED" for r in cli_runs)
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
