"""Steady CPU of the `make up` stack with demo traffic, and the Prefect flow runs it makes a day.

Real parts: `watchkeeper up --demo-traffic` on free ports and a temp home (Prefect server, service,
warm executor, Alertmanager, Prometheus, the demo traffic at 20 predictions a second), with the
example config's schedules unchanged (collection every 15 s). After a warm-up it reads, for every
process of the stack and its descendants, user and system CPU (`/proc/PID/stat`, reaped children
included) at the start and end of the window; cores = CPU seconds / wall seconds.

Flow runs a day: from the deployments' schedules in Prefect (what the scheduler will create), and
the runs that started during the window, scaled to a day, as a check.

Baseline: the issue's aim of under 0.1 of a core; `ratio_to_aim` = cores / 0.1. (Measured before the
warm executor: about 0.46 of a core, most of it a new interpreter for each collection run.)

Usage: python benchmarks/idle.py [--warmup 120] [--window 300]; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchkeeper.local.stack import PidRecord, free_ports  # noqa: E402

AIM_CORES = 0.1
WATCHKEEPER = str(Path(sys.executable).parent / "watchkeeper")
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / TICKS


def cpu_by_component(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each component's process tree (live processes; exited ones are in their
    parent's reaped-children time)."""
    stats = {
        int(p.name): s for p in Path("/proc").iterdir() if p.name.isdigit() and (s := _stat(int(p.name)))
    }
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    totals = {}
    for name, root in roots.items():
        seen, todo, total = set(), [root], 0.0
        while todo:
            pid = todo.pop()
            if pid in seen or pid not in stats:
                continue
            seen.add(pid)
            total += stats[pid][1]
            todo += children.get(pid, [])
        totals[name] = total
    return totals


def scheduled_runs_per_day(prefect_api: str) -> dict[str, float]:
    deployments = httpx.post(f"{prefect_api}/deployments/filter", json={}).json()
    per_day = {}
    for deployment in deployments:
        for schedule in deployment.get("schedules") or []:
            interval = (schedule.get("schedule") or {}).get("interval")
            if schedule.get("active", True) and interval:
                per_day[deployment["name"]] = per_day.get(deployment["name"], 0.0) + 86400 / interval
    return per_day


def runs_started(prefect_api: str, after: datetime, before: datetime) -> int:
    window = {"after_": after.isoformat(), "before_": before.isoformat()}
    return httpx.post(f"{prefect_api}/flow_runs/count", json={"flow_runs": {"start_time": window}}).json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=float, default=120, help="seconds before the window")
    parser.add_argument("--window", type=float, default=300, help="seconds measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        ports = free_ports()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        env["WATCHKEEPER_HOME"] = f"{folder}/home"
        prefect_api = f"http://127.0.0.1:{ports['prefect']}/api"

        def cli(*a):  # noqa: ANN202
            return subprocess.run([WATCHKEEPER, *a], env=env, capture_output=True, text=True, timeout=300)

        up = cli("up", "--demo-traffic", *(f"--{name}-port={port}" for name, port in ports.items()))
        if up.returncode != 0:
            raise SystemExit(up.stdout + up.stderr)
        try:
            records = [PidRecord.load(p) for p in sorted(Path(folder, "home", "run").glob("*.json"))]
            roots = {r.name: r.pid for r in records if r is not None}
            print(f"stack up: {', '.join(roots)}; warming up {args.warmup:.0f} s", flush=True)
            time.sleep(args.warmup)
            start_wall, start_at, start_cpu = time.monotonic(), datetime.now(UTC), cpu_by_component(roots)
            time.sleep(args.window)
            end_wall, end_at, end_cpu = time.monotonic(), datetime.now(UTC), cpu_by_component(roots)
            wall = end_wall - start_wall
            cores = {name: (end_cpu[name] - start_cpu.get(name, 0.0)) / wall for name in end_cpu}
            started = runs_started(prefect_api, start_at, end_at)
            per_day = scheduled_runs_per_day(prefect_api)
        finally:
            cli("down")
    total = sum(cores.values())
    for name, share in sorted(cores.items(), key=lambda kv: -kv[1]):
        print(f"{name:<16} {share:.3f} cores")
    print(f"{'total':<16} {total:.3f} cores over {wall:.0f} s; {started} flow runs started in the window")
    print(
        json.dumps(
            {
                "baseline": "aim: under 0.1 of a core for the whole stack with demo traffic",
                "window_seconds": round(wall),
                "cpu_cores": round(total, 3),
                "cpu_cores_by_process": {k: round(v, 3) for k, v in cores.items()},
                "flow_runs_per_day": round(sum(per_day.values())),
                "flow_runs_per_day_by_deployment": {k: round(v) for k, v in per_day.items()},
                "flow_runs_started_in_window": started,
                "flow_runs_per_day_measured": round(started * 86400 / wall),
                "ratio_to_aim": round(total / AIM_CORES, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
