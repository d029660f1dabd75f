"""Soak: a time-compressed month for one model, with retention on, through the real service.

Each simulated day: 10,000 predictions and their labels POSTed to `watchkeeper serve` (its own
process) with that day's timestamps, an Alertmanager notification, the day's evaluation results
(96 windows of the collect flow's metrics), the tally fold collect-model-metrics runs, and a
retention pass at the day's end. After each day: the store's size on disk, 20 `/metrics` scrapes
(latency) and the service's resident memory. With retention on, all three should stop growing once
the retention horizon is reached. Baseline: the same month without retention (`--no-retention`).

Kinds whose age is the server's clock (notifications and outbox rows, a few per day) do not age
in a compressed month; every kind keyed by when it happened does.

Usage: python benchmarks/soak.py [--days 30] [--per-day 10000] [--retention-days 7]; the last line
is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.retention import apply_retention  # noqa: E402
from watchkeeper.config import Retention  # noqa: E402
from watchkeeper.local.stack import service_process  # noqa: E402
from watchkeeper.settings import Settings  # noqa: E402
from watchkeeper.store import Store  # noqa: E402
from watchkeeper.store.intake import fold_tallies  # noqa: E402
from watchkeeper.store.schema import EvaluationResult  # noqa: E402

START = datetime(2026, 10, 1, tzinfo=UTC)
BATCH = 500
METRICS = ("request_count", "throughput_rps", "error_rate", "latency_p50", "latency_p95", "accuracy")


def day_records(day: int, per_day: int) -> tuple[list[dict], list[dict]]:
    base = START + timedelta(days=day)
    predictions, feedback = [], []
    for i in range(per_day):
        at = (base + timedelta(seconds=i * 86_400 / per_day)).isoformat()
        request = f"d{day}-r{i}"
        predictions.append(
            {
                "model_name": "credit_approval",
                "model_version": "v1",
                "request_id": request,
                "timestamp": at,
                "features": {"salary": 30_000 + i % 90_000, "age": 20 + i % 60, "elevel": i % 5},
                "prediction": i % 2,
                "score": (i % 100) / 100,
                "latency_seconds": 0.01 + (i % 50) / 1000,
            }
        )
        feedback.append(
            {"model_name": "credit_approval", "request_id": request, "label": (i // 3) % 2, "timestamp": at}
        )
    return predictions, feedback


def notification(day: int) -> dict:
    at = (START + timedelta(days=day, hours=3)).isoformat()
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="ModelLatencyHigh", day="{day}"}}',
        "status": "firing",
        "receiver": "watchkeeper",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "ModelLatencyHigh", "model_name": "credit_approval", "n": str(n)},
                "annotations": {"summary": "p95 latency high"},
                "startsAt": at,
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": f"{day:04d}{n:012d}",
            }
            for n in range(5)
        ],
    }


def evaluations(store: Store, day: int) -> None:
    with store.writing() as session:
        for window in range(96):
            end = START + timedelta(days=day, minutes=15 * (window + 1))
            session.add_all(
                EvaluationResult(
                    kind="model_traffic",
                    subject="credit_approval",
                    model_version="v1",
                    window_start=end - timedelta(minutes=5),
                    window_end=end,
                    metric=metric,
                    value=1.0,
                )
                for metric in METRICS
            )


def store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(args: argparse.Namespace, home: Path) -> dict:
    database = home / "watchkeeper.db"
    url = f"sqlite:///{database}"
    store = Store(url)
    retention = Retention(**{k: timedelta(days=args.retention_days) for k in Retention().ages()})
    config = Settings(home=home).monitoring.model_copy(update={"retention": retention})
    sizes, memory, scrapes = [], [], []
    try:
        with service_process(url, home) as service, httpx.Client(base_url=service.url, timeout=120) as client:
            for day in range(args.days):
                predictions, feedback = day_records(day, args.per_day)
                for path, records in (("/v1/predictions", predictions), ("/v1/feedback", feedback)):
                    for start in range(0, len(records), BATCH):
                        client.post(path, json=records[start : start + BATCH]).raise_for_status()
                client.post("/v1/alertmanager", json=notification(day)).raise_for_status()
                evaluations(store, day)
                fold_tallies(store)
                if not args.no_retention:
                    apply_retention(store, config, home, START + timedelta(days=day + 1))
                day_scrapes = []
                for _ in range(20):
                    began = time.perf_counter()
                    client.get("/metrics").raise_for_status()
                    day_scrapes.append((time.perf_counter() - began) * 1000)
                scrapes += day_scrapes
                sizes.append(store_bytes(database))
                memory.append(round(rss_mb(service.pid), 1))
                print(
                    f"day {day + 1:>2}: store {sizes[-1] / 1e6:7.1f} MB, /metrics p50 "
                    f"{statistics.median(day_scrapes):6.1f} ms, service RSS {memory[-1]:6.1f} MB",
                    flush=True,
                )
    finally:
        store.dispose()
    ordered = sorted(scrapes)
    return {
        "retention_days": None if args.no_retention else args.retention_days,
        "store_bytes_by_day": sizes,
        "service_rss_mb_by_day": memory,
        "metrics_p50_ms": round(statistics.median(ordered), 1),
        "metrics_p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "service_peak_rss_mb": max(memory),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--per-day", type=int, default=10_000)
    parser.add_argument("--retention-days", type=int, default=7)
    parser.add_argument("--no-retention", action="store_true", help="the baseline: keep everything")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = run(args, Path(folder))
    horizon = args.retention_days
    if not args.no_retention and args.days > horizon + 1:
        settled = result["store_bytes_by_day"][horizon + 1 :]
        result["store_growth_after_horizon"] = round(settled[-1] / settled[0], 3)
    print(json.dumps({"baseline": "the same month without retention (--no-retention)", **result}))


if __name__ == "__main__":
    main()
