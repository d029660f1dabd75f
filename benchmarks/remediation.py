"""Time to act: Alertmanager's POST to the webhook until the first action's request reaches its target.

Real parts: `watchkeeper up` (Prefect server, the service, the warm executor serving the
deployments), a playbook whose first action is a circuit breaker on an HTTP stand-in. Each run
posts one Alertmanager notification (version 4) for a new alert on its own model, as Alertmanager
would, and times until the circuit breaker's request for that model arrives. The path: intake
commit, the executor's outbox dispatch (the run created with its idempotency key), its claim
(`Pending`), the flow engine in the executor's thread, correlation, the recorded decision, the
action.

Baseline: the issue's aim of a p95 under 3 s; `ratio_to_aim` = p95 / 3. After the runs it reads
each run's timeline (the outbox row in the store, the run's states in Prefect) and prints the
median time of each step, which is the README's timeline.

Usage: python benchmarks/remediation.py [--runs 20]; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.standins import HttpRecorder  # noqa: E402
from watchkeeper.local.stack import free_ports  # noqa: E402
from watchkeeper.settings import DEFAULT_CONFIG  # noqa: E402

AIM_SECONDS = 3.0
WATCHKEEPER = str(Path(sys.executable).parent / "watchkeeper")


def config(folder: Path, http: HttpRecorder) -> Path:
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["remediation"] = {
        "max_actions_per_hour": 10_000,
        "playbooks": [
            {
                "name": "break-the-circuit",
                "enabled": True,
                "cooldown": "0s",
                "match": {"alertname": "ModelAccuracyCritical"},
                "actions": [{"action": "circuit_breaker", "url": f"{http.url}/breaker/{{model_name}}/open"}],
            }
        ],
    }
    path = folder / "watchkeeper.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def notification(run: int) -> dict:
    labels = {
        "alertname": "ModelAccuracyCritical",
        "severity": "critical",
        "model_name": f"bench-model-{run}",
    }
    return {
        "version": "4",
        "groupKey": f"bench-{run}",
        "status": "firing",
        "receiver": "watchkeeper",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": "benchmark"},
                "startsAt": datetime.now(UTC).isoformat(),
                "fingerprint": f"bench{run:012d}",
            }
        ],
    }


STEPS = (
    ("intake: POST to outbox row committed", "posted", "owed"),
    ("dispatch: outbox row to Prefect run created", "owed", "created"),
    ("claim: run created to Pending", "created", "Pending"),
    ("engine: Pending to Running", "Pending", "Running"),
    ("flow: Running to the action's request", "Running", "acted"),
    ("after: the action to Completed", "acted", "Completed"),
)


def timeline(
    prefect_api: str, posted: dict[str, float], acted: dict[str, float]
) -> tuple[dict[str, float], list[str]]:
    """Median seconds of each step, from the outbox rows, Prefect's state history and the stand-in;
    and the final state of the run each POST owed."""
    from sqlalchemy import select

    from watchkeeper.settings import Settings
    from watchkeeper.store.schema import FlowRunOutbox

    with Settings().open_store().reading() as session:
        rows = [(row, _model_of(session, row)) for row in session.scalars(select(FlowRunOutbox))]
    steps: dict[str, list[float]] = {name: [] for name, _, _ in STEPS}
    finals = []
    for row, model in rows:
        if model not in posted or row.flow_run_id is None:
            continue
        run = httpx.get(f"{prefect_api}/flow_runs/{row.flow_run_id}").json()
        finals.append(run["state"]["type"])
        states = httpx.get(f"{prefect_api}/flow_run_states/", params={"flow_run_id": row.flow_run_id}).json()
        at = {"posted": posted[model], "owed": row.created_at.timestamp(), "acted": acted[model]}
        at["created"] = datetime.fromisoformat(run["created"]).timestamp()
        for state in states:
            at.setdefault(state["name"], datetime.fromisoformat(state["timestamp"]).timestamp())
        for name, start, end in STEPS:
            if start in at and end in at:
                steps[name].append(at[end] - at[start])
    return {name: round(statistics.median(values), 3) for name, values in steps.items() if values}, finals


def _model_of(session, row) -> str | None:  # noqa: ANN001
    from watchkeeper.store.schema import AlertNotification

    notification = session.get(AlertNotification, row.notification_id)
    alerts = (notification.payload or {}).get("alerts", []) if notification is not None else []
    return alerts[0]["labels"].get("model_name") if alerts else None


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, HttpRecorder() as http:
        ports = free_ports()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        env |= {"WATCHKEEPER_HOME": f"{folder}/home", "WATCHKEEPER_CONFIG": str(config(Path(folder), http))}
        os.environ.update({k: env[k] for k in ("WATCHKEEPER_HOME", "WATCHKEEPER_CONFIG")})
        wall = time.time() - time.monotonic()
        posted: dict[str, float] = {}
        acted: dict[str, float] = {}

        def cli(*a):
            return subprocess.run([WATCHKEEPER, *a], env=env, capture_output=True, text=True, timeout=300)  # noqa: E731

        up = cli("up", *(f"--{name}-port={port}" for name, port in ports.items()))
        if up.returncode != 0:
            raise SystemExit(up.stdout + up.stderr)
        service = f"http://127.0.0.1:{ports['service']}/v1/alertmanager"
        latencies = []
        # One client for every notification: Alertmanager keeps its connection, and a new httpx
        # client costs about 30 ms of CPU (its TLS context) before the POST leaves.
        alertmanager = httpx.Client(timeout=10)
        try:
            for run in range(args.runs):
                target = f"/breaker/bench-model-{run}/open"
                started = time.monotonic()
                posted[f"bench-model-{run}"] = started + wall
                alertmanager.post(service, json=notification(run)).raise_for_status()
                while not http.to(target):
                    if time.monotonic() - started > 60:
                        raise SystemExit(f"run {run}: no action within 60 s")
                    time.sleep(0.01)
                latencies.append(http.to(target)[0].at - started)
                acted[f"bench-model-{run}"] = http.to(target)[0].at + wall
                print(f"run {run + 1:>3}: {latencies[-1]:.2f} s", flush=True)
            time.sleep(2)  # the last run's Completed state
            steps, finals = timeline(f"http://127.0.0.1:{ports['prefect']}/api", posted, acted)
        finally:
            alertmanager.close()
            cli("down")
    p95 = percentile(latencies, 0.95)
    for name, seconds in steps.items():
        print(f"{name:<48} {seconds:.3f} s (median)")
    print(
        json.dumps(
            {
                "baseline": "aim: p95 under 3 s from Alertmanager's POST to the first action",
                "runs": len(latencies),
                "median_seconds": round(statistics.median(latencies), 3),
                "p95_seconds": round(p95, 3),
                "min_seconds": round(min(latencies), 3),
                "max_seconds": round(max(latencies), 3),
                "ratio_to_aim": round(p95 / AIM_SECONDS, 3),
                "timeline_median_seconds": steps,
                "handle_alerts_runs": len(finals),
                "handle_alerts_runs_completed": finals.count("COMPLETED"),
            }
        )
    )


if __name__ == "__main__":
    main()
