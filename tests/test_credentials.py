"""Credentials per role: intake, the Alertmanager webhook, operators; who changed what comes from the
credential, not the body; a token set but empty, or a non-loopback bind without credentials,
refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveService, free_port
from tests.test_incidents import alert
from tests.test_remediation import incident_for, remediation_config, secrets  # noqa: F401 - autouse
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.remediation.decisions import handle_incident
from watchkeeper.settings import Settings
from watchkeeper.store import Store
from watchkeeper.store.actions import list_actions

WATCHKEEPER = str(Path(sys.executable).parent / "watchkeeper")
INTAKE, WEBHOOK, OPERATOR = "intake-t0ken", "webh00k-token", "0perator-token"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def roles(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in (("INTAKE", INTAKE), ("ALERTMANAGER", WEBHOOK), ("OPERATOR", OPERATOR)):
        monkeypatch.setenv(f"WATCHKEEPER_{name}_TOKEN", value)
    monkeypatch.setenv("WATCHKEEPER_API_TOKEN", "shared-fallback")
    return Settings()


def test_each_token_opens_its_own_role_only(
    example_config: WatchkeeperConfig, store: Store, roles: Settings
) -> None:
    prediction = [
        {
            "model_name": "credit_approval",
            "model_version": "v1",
            "request_id": "r",
            "timestamp": "2026-11-26T09:00:00Z",
            "features": {},
            "prediction": 1,
        }
    ]
    webhook = {"version": "4", "status": "firing", "receiver": "w", "groupKey": "g", "alerts": []}
    with LiveService(example_config, store, credentials=roles.credentials) as live:
        post = lambda path, token, body: httpx.post(f"{live.url}{path}", json=body, headers=bearer(token))  # noqa: E731
        assert post("/v1/predictions", INTAKE, prediction).status_code == 200
        for token in (WEBHOOK, OPERATOR, "shared-fallback"):
            assert post("/v1/predictions", token, prediction).status_code == 401
        assert post("/v1/alertmanager", INTAKE, webhook).status_code == 401
        assert post("/v1/alertmanager", WEBHOOK, webhook).status_code != 401
        # The intake token can neither read, nor turn the kill switch, nor approve.
        assert httpx.get(f"{live.url}/v1/incidents", headers=bearer(INTAKE)).status_code == 401
        switch = lambda token: httpx.put(  # noqa: E731
            f"{live.url}/v1/remediation", json={"enabled": False}, headers=bearer(token)
        )
        assert switch(INTAKE).status_code == 401 and switch(WEBHOOK).status_code == 401
        approve = lambda token: post("/v1/incidents/1/approval", token, {"approved": True})  # noqa: E731
        assert approve(INTAKE).status_code == 401 and approve(WEBHOOK).status_code == 401
        assert httpx.get(f"{live.url}/v1/incidents", headers=bearer(OPERATOR)).status_code == 200
        assert switch(OPERATOR).json() == {
            "enabled": False,
            "changed_by": "operator (WATCHKEEPER_OPERATOR_TOKEN)",
        }
        assert approve(OPERATOR).status_code == 409  # nothing awaits approval: said, not a 5xx


def test_the_cli_approves_through_the_service_as_the_operator(
    tmp_path: Path, store: Store, standins: tuple, roles: Settings
) -> None:
    kube, http, smtp = standins
    config = remediation_config(tmp_path, *standins)
    incident_id = incident_for(
        store, config, alert("DataQualityDegraded", timedelta(0), service="batch-scorer")
    )
    handle_incident(store, config, incident_id, "a-paused-run")
    resumed: list[tuple[str, dict]] = []
    with LiveService(
        config,
        store,
        credentials=roles.credentials,
        resume_run=lambda run, answer: resumed.append((run, answer)),
    ) as live:
        env = {**os.environ, "WATCHKEEPER_HOME": str(tmp_path / "cli-home"), "WATCHKEEPER_URL": live.url}
        cli = lambda *args: subprocess.run(  # noqa: E731
            [WATCHKEEPER, *args], capture_output=True, text=True, env=env, timeout=120
        )
        env["WATCHKEEPER_OPERATOR_TOKEN"] = INTAKE
        refused = cli("approve", str(incident_id))
        env["WATCHKEEPER_OPERATOR_TOKEN"] = OPERATOR
        approved = cli("approve", str(incident_id), "--comment", "go")
        again = cli("approve", str(incident_id))
    assert refused.returncode != 0 and "401" in refused.stdout + refused.stderr
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "approved" in approved.stdout and "1 paused run(s) resumed" in approved.stdout
    assert again.returncode != 0 and "no actions awaiting approval" in again.stdout + again.stderr
    assert resumed == [("a-paused-run", {"approved": True, "comment": "go"})]
    [row] = list_actions(store, incident_id).items
    assert (row["status"], row["settled_by"]) == ("approved", "operator (WATCHKEEPER_OPERATOR_TOKEN)")
    assert row["reason"].endswith("approved by operator (WATCHKEEPER_OPERATOR_TOKEN): go")


def cli_serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [WATCHKEEPER, "serve", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_an_empty_token_or_an_open_bind_without_credentials_refuses_to_start(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WATCHKEEPER_")}
    base["WATCHKEEPER_HOME"] = str(tmp_path)
    empty = cli_serve({**base, "WATCHKEEPER_OPERATOR_TOKEN": ""})
    assert empty.returncode == 2
    assert "WATCHKEEPER_OPERATOR_TOKEN is set but empty" in empty.stderr
    open_bind = cli_serve({**base, "WATCHKEEPER_INTAKE_TOKEN": "x"}, "--host", "0.0.0.0")
    assert open_bind.returncode != 0
    message = " ".join((open_bind.stdout + open_bind.stderr).split())
    assert "refusing to listen on 0.0.0.0 without credentials for every role" in message
    assert "WATCHKEEPER_ALERTMANAGER_TOKEN, WATCHKEEPER_OPERATOR_TOKEN" in message
