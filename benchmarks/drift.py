"""Drift evaluation speed: evaluate-drift's computation against a bare Evidently DataDriftPreset report.

Baseline: `Report([DataDriftPreset()], include_tests=True).run(current, reference)` on the same
frames, in the same process. Watchkeeper runs one ValueDrift per column and reads the verdicts
from their tests; the preset also computes its DriftedColumnsCount, which runs every column's
drift a second time through the legacy DataDriftTable. A third run shows the documented sampling option
(`windows.drift_sample_rows`) and whether its verdicts match the full run's; a fourth runs on the
sample the intake keeps (`intake.sample_per_bucket` per bucket, `store/samples.py`) of a window whose
traffic rises through it.

Usage: python benchmarks/drift.py [--rows 1000000] [--features 20] [--sample 100000]
The last line is JSON; `overhead_ratio` = Watchkeeper time / baseline time (target <= 1.15).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tasks.drift import ColumnSpec, compute_drift  # noqa: E402
from watchkeeper.intake.aggregates import request_priority  # noqa: E402
from watchkeeper.store.samples import uniform_sample  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples this process's resident memory every 20 ms; `peak` is the highest seen while running."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def frames(rows: int, features: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Reference and current frames; the first quarter of the features shift in the current one."""
    rng = np.random.default_rng(seed)
    columns = [f"f{i:02d}" for i in range(features)]
    reference = pd.DataFrame(rng.normal(0, 1, (rows, features)), columns=columns)
    shift = np.where(np.arange(features) < features // 4, 0.3, 0.0)
    current = pd.DataFrame(rng.normal(shift, 1, (rows, features)), columns=columns)
    return reference, current, columns


def intake_sample(current: pd.DataFrame, buckets: int, per_bucket: int) -> pd.DataFrame:
    """The sample the intake keeps of `current` served over `buckets` buckets whose traffic rises
    through the window (the last bucket busiest): each row a request id, its bucket's bottom
    `per_bucket` by request-id priority, then the uniform selection `store/samples.py` reads."""
    position = np.arange(len(current)) / len(current)
    keyed = pd.DataFrame(
        {
            "bucket_start": np.minimum((np.sqrt(position) * buckets).astype(int), buckets - 1),
            "priority": [request_priority(f"r{i}") for i in range(len(current))],
        }
    )
    chosen = uniform_sample(keyed, per_bucket)
    return current.loc[chosen.index]


def timed(work: Callable[[], Any]) -> tuple[Any, float, int]:
    with PeakRss() as memory:
        started = time.perf_counter()
        result = work()
        elapsed = time.perf_counter() - started
    return result, elapsed, memory.peak


def report(label: str, seconds: float, peak: int) -> None:
    print(f"{label:<40} {seconds:8.1f} s   peak RSS {peak / 2**20:7.0f} MiB", flush=True)


def preset_verdicts(snapshot: Any) -> dict[str, bool]:
    payload = snapshot.dict()
    column_of = {m["id"]: m["config"].get("column") for m in payload["metrics"]}
    return {
        column_of[t["metric_config"]["metric_id"]]: t["status"] == "FAIL"
        for t in payload["tests"]
        if column_of.get(t["metric_config"]["metric_id"])
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--sample", type=int, default=100_000)
    parser.add_argument("--buckets", type=int, default=60, help="the intake's buckets the window spans")
    parser.add_argument("--per-bucket", type=int, default=200, help="intake.sample_per_bucket")
    args = parser.parse_args()
    reference, current, columns = frames(args.rows, args.features)
    specs = [ColumnSpec(c, "numerical") for c in columns]
    print(f"{args.rows:,} rows x {args.features} numerical features, {args.features // 4} shifted")

    definition = DataDefinition(numerical_columns=columns)
    baseline, baseline_s, baseline_mem = timed(
        lambda: Report([DataDriftPreset()], include_tests=True).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
    )
    report("baseline DataDriftPreset", baseline_s, baseline_mem)
    ours, ours_s, ours_mem = timed(lambda: compute_drift(reference, current, specs))
    report("watchkeeper compute_drift", ours_s, ours_mem)
    sampled, sampled_s, sampled_mem = timed(
        lambda: compute_drift(reference, current, specs, sample_rows=args.sample)
    )
    report(f"watchkeeper sampled to {args.sample:,} rows", sampled_s, sampled_mem)

    kept = intake_sample(current, args.buckets, args.per_bucket)
    intake, intake_s, intake_mem = timed(lambda: compute_drift(reference, kept, specs))
    report(f"watchkeeper on the intake's sample ({len(kept):,} rows)", intake_s, intake_mem)

    full = {c.column: c.drifted for c in ours.columns}
    summary = {
        "baseline": "evidently Report([DataDriftPreset()], include_tests=True)",
        "rows": args.rows,
        "features": args.features,
        "baseline_seconds": round(baseline_s, 2),
        "watchkeeper_seconds": round(ours_s, 2),
        "sampled_seconds": round(sampled_s, 2),
        "sample_rows": args.sample,
        "rows_per_second": round(2 * args.rows / ours_s),
        "baseline_peak_rss_mib": round(baseline_mem / 2**20),
        "watchkeeper_peak_rss_mib": round(ours_mem / 2**20),
        "verdicts_match_baseline": full == preset_verdicts(baseline),
        "sampled_verdicts_match": full == {c.column: c.drifted for c in sampled.columns},
        "max_sampled_score_difference": round(
            max(abs(a.score - b.score) for a, b in zip(ours.columns, sampled.columns, strict=True)), 5
        ),
        "sampled_speedup": round(ours_s / sampled_s, 2),
        "intake_sample_rows": len(kept),
        "intake_sample_verdicts_match": full == {c.column: c.drifted for c in intake.columns},
        "max_intake_sample_score_difference": round(
            max(abs(a.score - b.score) for a, b in zip(ours.columns, intake.columns, strict=True)), 5
        ),
        "overhead_ratio": round(ours_s / baseline_s, 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
