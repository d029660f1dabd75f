"""Whatever Watchkeeper starts, it stops: the Prefect server an executor starts for itself dies with
it, even under kill -9; the service starts no Prefect server at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from deployments.serve import FLOWS
from tests.conftest import free_port
from tests.realstack import wait_until
from tests.test_alert_intake import NOTIFICATION
from watchkeeper.runtime.host import start_ticks
from watchkeeper.store import Store

BIN = Path(sys.executable).parent


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                found.append(int(entry.name))
    return found


def environment(tmp_path: Path, store: Store) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return env | {
        "WATCHKEEPER_HOME": str(tmp_path / "home"),
        "WATCHKEEPER_DATABASE_URL": store.url.render_as_string(hide_password=False),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }


def test_the_prefect_server_an_executor_started_dies_with_it_even_under_kill_9(
    tmp_path: Path, store: Store
) -> None:
    log = tmp_path / "executor.log"
    with log.open("wb") as out:
        executor = subprocess.Popen(
            [str(BIN / "watchkeeper"), "executor"], env=environment(tmp_path, store), stdout=out, stderr=out
        )
    try:
        wait_until(
            lambda: f"serving {len(FLOWS)} deployments" in log.read_text(),
            "the executor and its server",
            timeout=240,
        )
        [server] = children(executor.pid)
        assert b"prefect" in Path(f"/proc/{server}/cmdline").read_bytes()
    finally:
        executor.send_signal(signal.SIGKILL)
        executor.wait()
    wait_until(lambda: start_ticks(server) is None, "the Prefect server to stop", timeout=30)


def test_the_service_starts_no_prefect_server(tmp_path: Path, store: Store) -> None:
    port = free_port()
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        service = subprocess.Popen(
            [str(BIN / "watchkeeper"), "serve", "--port", str(port)],
            env=environment(tmp_path, store),
            stdout=out,
            stderr=out,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/healthz").is_success, "the service")
        assert httpx.post(f"{url}/v1/alertmanager", json=NOTIFICATION).status_code == 200
        assert children(service.pid) == []
    finally:
        service.terminate()
        service.wait(timeout=30)
