"""Intake throughput: records stored per second by one writer and by 8 concurrent writers.

The service runs as `watchkeeper serve` (its own process, real HTTP on loopback) on SQLite and on
a throwaway PostgreSQL cluster; each writer POSTs batches of 100 predictions for the same model
(distinct request ids), as the replicas of one model service would. Baseline: one writer on the
same back end. On PostgreSQL, the store users scale out on, 8 writers together should store more
records per second than one alone; a shared row updated by every batch serialises them.

Usage: python benchmarks/intake.py [--batches 40] [--batch-size 100] [--writers 8]; the last line
is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchkeeper.local.pgtemp import new_database, postgres_cluster  # noqa: E402
from watchkeeper.local.stack import service_process  # noqa: E402


def batch(writer: str, number: int, size: int) -> list[dict]:
    now = datetime.now(UTC).isoformat()
    return [
        {
            "model_name": "credit_approval",
            "model_version": "v1",
            "request_id": f"w{writer}-b{number}-r{i}",
            "timestamp": now,
            "features": {"salary": 40_000 + i, "age": 30 + i % 40, "elevel": i % 5},
            "prediction": i % 2,
            "score": 0.5,
            "latency_seconds": 0.01 + (i % 10) / 100,
        }
        for i in range(size)
    ]


def run_writers(url: str, writers: int, batches: int, size: int, tag: str) -> tuple[float, list[float]]:
    """(records per second, per-request seconds) for `writers` threads posting `batches` each."""
    latencies: list[float] = []
    lock = threading.Lock()
    bodies = {w: [json.dumps(batch(f"{tag}-{w}", n, size)) for n in range(batches)] for w in range(writers)}
    start = threading.Barrier(writers + 1)

    def write(w: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            start.wait()
            for body in bodies[w]:
                began = time.perf_counter()
                response = client.post("/v1/predictions", content=body)
                took = time.perf_counter() - began
                response.raise_for_status()
                with lock:
                    latencies.append(took)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return writers * batches * size / (time.perf_counter() - began), latencies


def measure(database_url: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as home, service_process(database_url, Path(home)) as service:
        run_writers(service.url, 1, 3, args.batch_size, "warm-up")
        figures = {}
        for writers in (1, args.writers):
            rate, latencies = run_writers(
                service.url, writers, args.batches, args.batch_size, f"run-{writers}"
            )
            ordered = sorted(latencies)
            figures[writers] = {
                "records_per_second": round(rate, 1),
                "p50_ms": round(statistics.median(ordered) * 1000, 1),
                "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
            }
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40, help="batches per writer")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--writers", type=int, default=8)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        results["sqlite"] = measure(f"sqlite:///{folder}/store.db", args)
    with postgres_cluster() as cluster:
        results["postgresql"] = measure(new_database(cluster), args)
    for back_end, figures in results.items():
        one, many = figures[1], figures[args.writers]
        ratio = round(many["records_per_second"] / one["records_per_second"], 2)
        figures["ratio"] = ratio
        print(
            f"{back_end:>10}: 1 writer {one['records_per_second']:>8,.0f} records/s "
            f"(p50 {one['p50_ms']} ms, p99 {one['p99_ms']} ms) | {args.writers} writers "
            f"{many['records_per_second']:>8,.0f} records/s (p50 {many['p50_ms']} ms, "
            f"p99 {many['p99_ms']} ms) | ratio x{ratio}",
            flush=True,
        )
    print(
        json.dumps(
            {
                "baseline": "one writer on the same back end",
                "batch_size": args.batch_size,
                "writers": args.writers,
                "results": {b: {str(k): v for k, v in f.items()} for b, f in results.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
