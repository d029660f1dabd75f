"""`watchkeeper up --ha` under load, a service and an executor killed in turn, and a remediation race.

The smoke test of benchmarks/scaleout.py (which runs every fault of the matrix): the topology's
real processes on free loopback ports, predictions and labels through the client and alerts through
both clustered Alertmanagers, each alert's playbook opening a breaker on a stand-in.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from benchmarks.scaleout import FAULTS, Scaleout
from tests.standins import HttpRecorder
from watchkeeper.runtime.host import BIN

pytestmark = pytest.mark.stack


def _prometheus(url: str, query: str) -> list[dict]:
    return httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=10).json()["data"]["result"]


def test_replicas_killed_under_load_lose_nothing_and_act_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WATCHKEEPER_HOME", "WATCHKEEPER_CONFIG"):  # Scaleout sets them; restored after
        monkeypatch.setenv(name, "")
    for name in ("PREFECT_API_URL", "WATCHKEEPER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with HttpRecorder() as recorder:
        run = Scaleout(tmp_path, rate=200, recorder=recorder)
        run.up()
        try:
            status = subprocess.run(
                [str(BIN / "watchkeeper"), "status"],
                env={**os.environ, "COLUMNS": "200"},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            running = [line for line in status.splitlines() if "│ yes" in line]
            # every process of the topology, each replica its row, and the host's node exporter
            assert len(running) == 16 and any("node-exporter" in line for line in running), status
            for fault in ("service", "executor"):
                outcome = run.phase(fault, settle=10, restart_after=5, observe=25)
                assert outcome["lost"] == 0, (fault, outcome)
                assert outcome["duplicated"] == 0, (fault, outcome)
                assert outcome["remediations_per_action"] == 1, (fault, outcome)
                assert outcome["missing_actions"] == 0, (fault, outcome)
                assert outcome["stranded_max_s"] <= 60, (fault, outcome)
                assert run.stack.record(FAULTS[fault]).alive(), f"{fault} was not brought back"
            race = run.race(copies=6, slow_s=3.0)  # overlapping runs, a slow target: one request
            assert race["requests"] == 1, race
            assert sum(race["runs_by_executor"].values()) >= 2, race
            prometheus = f"http://127.0.0.1:{run.stack.topology.prometheus[0]}"
            # The store's series come once through the load balancer; each replica's own counters
            # come from it, so a sum over them is the whole service's.
            stored = _prometheus(prometheus, "count(watchkeeper_predictions_total)")
            assert stored and stored[0]["value"][1] == "1"
            replicas = _prometheus(prometheus, 'count(up{job="watchkeeper-replicas"} == 1)')
            assert replicas and replicas[0]["value"][1] == "2"
            [host] = _prometheus(prometheus, 'up{job="node"} == 1')  # the host, by its name
            assert host["metric"]["instance"] == "localhost"
        finally:
            run.down()
    assert not any(run.stack.record(name) for name in run.stack.all_names())
