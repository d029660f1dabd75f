"""Each metric of a model beside its expected band, over a report's period, as Prometheus recorded
them (the anomaly rules of watchkeeper/anomalies.py own the band; this only reads it back).

The report shows, per metric: its last value, what was expected then, the band's edge, and how
long the metric spent beyond that edge in its bad direction. Without a Prometheus to ask
(WATCHKEEPER_PROMETHEUS_URL), or when it does not answer, the report says so instead.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import httpx

from watchkeeper.anomalies import METRICS, AnomalyMetric
from watchkeeper.config import Model, WatchkeeperConfig

POINTS = 240
MIN_STEP_SECONDS = 60
TIMEOUT_SECONDS = 10.0


def step_seconds(start: datetime, end: datetime) -> int:
    """About `POINTS` points over the period, never closer than a minute."""
    return max(MIN_STEP_SECONDS, math.ceil((end - start).total_seconds() / POINTS))


def subjects(config: WatchkeeperConfig, model: Model) -> list[tuple[AnomalyMetric, str]]:
    """Each watched metric with the label selector of this model's series: the model's own, and
    its datasets' pipelines' error ratio."""
    found = []
    for metric in METRICS:
        if "model_name" in metric.labels:
            found.append((metric, f'model_name="{model.name}"'))
        else:
            pipelines = sorted({d.pipeline for d in config.datasets_of(model.name) if d.pipeline})
            found += [(metric, f'pipeline_name="{pipeline}"') for pipeline in pipelines]
    return found


def _range(client: httpx.Client, expr: str, start: datetime, end: datetime, step: int) -> list[dict]:
    answer = client.get(
        "/api/v1/query_range",
        params={"query": expr, "start": start.timestamp(), "end": end.timestamp(), "step": step},
    )
    answer.raise_for_status()
    return answer.json()["data"]["result"]


def _values(series: dict) -> dict[float, float]:
    return {float(at): float(value) for at, value in series["values"]}


def _key(series: dict, metric: AnomalyMetric) -> tuple[str, ...]:
    return tuple(series["metric"].get(label, "") for label in metric.labels)


def band_rows(metric: AnomalyMetric, parts: dict[str, list[dict]], step: int) -> list[dict[str, Any]]:
    """One row per series of `metric` (a model version, a business metric, a pipeline) from its
    recorded signal, expected value and edge (`parts`, Prometheus' range results by part)."""
    by_part = {part: {_key(s, metric): _values(s) for s in found} for part, found in parts.items()}
    rows = []
    for key, signal in sorted(by_part["rate1m"].items()):
        expected, edge = by_part["expected"].get(key, {}), by_part[metric.edge].get(key, {})
        times = sorted(signal)
        beyond = [
            t
            for t in times
            if t in edge and (signal[t] < edge[t] if metric.direction == "drop" else signal[t] > edge[t])
        ]
        last = times[-1]
        rows.append(
            {
                "metric": metric.key,
                "title": metric.title,
                "unit": metric.unit,
                "direction": metric.direction,
                "alert": metric.alert,
                "series": dict(zip(metric.labels, key, strict=True)),
                "at": [datetime.fromtimestamp(t, UTC).isoformat() for t in times],
                "value": [round(signal[t], 6) for t in times],
                "expected": [_rounded(expected.get(t)) for t in times],
                "edge": [_rounded(edge.get(t)) for t in times],
                "last": round(signal[last], 6),
                "last_expected": _rounded(expected.get(last)),
                "minutes_beyond": round(len(beyond) * step / 60, 1),
            }
        )
    return rows


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def expected_bands(
    prometheus_url: str | None, config: WatchkeeperConfig, model: Model, start: datetime, end: datetime
) -> dict[str, Any]:
    """The model's metrics beside their bands over [start, end), or why they are not available."""
    if not prometheus_url:
        return {"available": False, "reason": "no Prometheus to ask (set WATCHKEEPER_PROMETHEUS_URL)"}
    step = step_seconds(start, end)
    rows: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=prometheus_url.rstrip("/"), timeout=TIMEOUT_SECONDS) as client:
            for metric, selector in subjects(config, model):
                parts = {
                    part: _range(client, f"{metric.series(part)}{{{selector}}}", start, end, step)
                    for part in ("rate1m", "expected", metric.edge)
                }
                rows += band_rows(metric, parts, step)
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return {"available": False, "reason": f"Prometheus at {prometheus_url} did not answer: {exc}"}
    return {"available": True, "step_seconds": step, "metrics": rows}
