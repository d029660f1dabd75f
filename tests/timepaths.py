"""Predictions at known UTC times, written the ways senders write them (`Z`, `+00:00`, `+02:00`), and
what a report's chart must show for them: the oracle of the tests that take times through the real
paths (HTTP bodies, Prefect parameters and schedules, Typer options)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

from tasks.reporting import CHART_BINS

# Bins of a minute: the period's first prediction is CHART_BINS minutes before its end.
BIN = timedelta(minutes=1)
# Offsets in turn: Z, +00:00, +02:00, -05:30.
OFFSETS = ("Z", timedelta(0), timedelta(hours=2), -timedelta(hours=5, minutes=30))


def written(moment: datetime, offset: str | timedelta) -> str:
    """`moment` (UTC) as a sender in that offset writes it."""
    if offset == "Z":
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.astimezone(timezone(offset)).isoformat()


def times_before(end: datetime) -> list[datetime]:
    """UTC times of the period's predictions: the first exactly CHART_BINS bins before `end`, one on a
    bin's edge, one a microsecond before the next edge, and the rest spread unevenly."""
    first = end - CHART_BINS * BIN
    spread = [first + timedelta(seconds=37 * i % (CHART_BINS * 60 - 60)) for i in range(1, 80)]
    return [first, first + 20 * BIN, first + 31 * BIN - timedelta(microseconds=1), *spread]


def prediction_bodies(times: list[datetime], tag: str) -> list[dict[str, Any]]:
    return [
        {
            "model_name": "credit_approval",
            "model_version": "v1",
            "request_id": f"{tag}-{i}",
            "timestamp": written(moment, OFFSETS[i % len(OFFSETS)]),
            "features": {"salary": 1000.0 + i, "car": i % 3},
            "prediction": i % 2,
            "score": 0.9 if i % 2 else 0.1,
            "latency_seconds": 0.02,
        }
        for i, moment in enumerate(times)
    ]


def expected_bins(times: list[datetime], end: datetime) -> dict[str, int]:
    """The chart's requests per bin start: CHART_BINS bins from the first time to `end`, each
    [start, next start). Whole minutes apart, the edges fall on whole microseconds."""
    first = min(times)
    width = (end - first) / CHART_BINS
    counts = Counter((t - first) // width for t in times if t < end)
    return {(first + k * width).isoformat(): n for k, n in sorted(counts.items())}


def assert_bins_match(summary: dict[str, Any], times: list[datetime], end: datetime) -> None:
    """Every posted prediction in the period is counted, each in the bin of its UTC time."""
    series = summary["series"]
    assert sum(series["requests"]) == sum(t < end for t in times) == summary["traffic"]["requests"]
    assert dict(zip(series["at"], series["requests"], strict=True)) == expected_bins(times, end)
