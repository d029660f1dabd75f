"""Anomaly detection against each metric's normal: the metrics watched, how their expected band is
built, and the Prometheus rules that build it (infra/prometheus/rules/watchkeeper-anomalies.yml
is rendered from this table: `python -m watchkeeper.anomalies > that file`).

Each metric's signal is its last minute, from the intake's counters, recorded every evaluation. Its
normal has three parts, each a recording rule:

- level: the median of the signal over ten minutes ending a minute ago. A median is robust to a
  few odd minutes, and the minute's gap keeps a fault that just began out of its own baseline.
- spread: the noise, from the signal's minute-to-minute changes over the last hour (their
  interquartile range scaled to a standard deviation, robust to the faults among them). Changes, not
  values, so that a daily cycle inside the hour is not counted as noise.
- seasonal deviation: how far the signal sat from its level at this time one day and one week back.

The band is the level, moved by the seasonal deviations (as far as either of them and no further:
a day or week back that was itself abnormal, a holiday or an outage, can widen the band but never
narrow it), then widened by a tolerance: the largest of k spreads, a minimum absolute change and
a share of the level. An alert fires when the signal leaves the band in its metric's direction for
`for_`, while enough traffic flows to judge it.

Warm-up: a level exists only once the signal was seen ten minutes ago, so a new model, version or
pipeline has no band and no alert. A persistent new level becomes the level after about six minutes;
`keep_firing_for` holds the alert for ten more, and the fixed floors (ModelThroughputLow and the
rest) keep judging the new level.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any, Literal

import yaml

PREFIX = "ai_anomaly"
LEVEL_WINDOW = "10m"
LEVEL_GAP = "1m"
WARM_UP_SECONDS = 600
WARM_UP = f"{WARM_UP_SECONDS // 60}m"
SPREAD_WINDOW = "1h"
# The interquartile range of a normal variable is 1.349 standard deviations, and a change between
# two independent minutes has twice the variance of one (sqrt(2) times its deviation): 1.349 * sqrt(2).
IQR_OF_CHANGES_PER_SPREAD = 1.908
SEASONS = {"day": "1d", "week": "1w"}
KEEP_FIRING_FOR = "10m"
BASELINE_INTERVAL = "30s"
RUNBOOK = "http://127.0.0.1:8765/runbooks/"


@dataclass(frozen=True)
class AnomalyMetric:
    """One watched metric: its signal (PromQL, one series per `labels`), which way is bad, and the
    tolerance around its normal."""

    key: str
    title: str
    unit: str
    signal: str
    labels: tuple[str, ...]
    direction: Literal["drop", "rise"]
    alert: str
    spreads: float
    min_change: float
    relative_change: float
    volume: str
    team: str
    service: str
    for_: str = "30s"
    otherwise: str = ""

    def series(self, part: str) -> str:
        return f"{PREFIX}:{self.key}:{part}"

    @property
    def by(self) -> str:
        return ", ".join(self.labels)

    @property
    def runbook(self) -> str:
        """The alert's section of infra/prometheus/runbooks.md: ModelThroughputAnomalous ->
        model-throughput-anomalous."""
        return re.sub(r"(?<!^)(?=[A-Z])", "-", self.alert).lower()

    @property
    def edge(self) -> str:
        return "lower" if self.direction == "drop" else "upper"


MODEL = ("model_name", "model_version")
PREDICTIONS_RATE = "sum by (model_name, model_version) (rate(watchkeeper_predictions_total[1m]))"
# At least one prediction every two seconds over the version's last minute: below that a ratio or a
# quantile is a handful of requests (a canary's, say).
ENOUGH_PREDICTIONS = f"{PREDICTIONS_RATE} >= 0.5"
PIPELINE_RECORDS_RATE = "sum by (pipeline_name) (rate(ai_pipeline_records_total[1m]))"

METRICS: tuple[AnomalyMetric, ...] = (
    # Traffic is the callers', not a version's: judged per model, so that moving traffic from one
    # version to the next is not a drop (errors and latency are a version's own).
    AnomalyMetric(
        key="throughput_rps",
        title="Throughput",
        unit="rps",
        signal="sum by (model_name) (rate(watchkeeper_predictions_total[1m]))",
        labels=("model_name",),
        direction="drop",
        alert="ModelThroughputAnomalous",
        spreads=4,
        min_change=1.0,
        relative_change=0.4,
        volume="",
        team="platform_engineering",
        service="model-inference",
    ),
    AnomalyMetric(
        key="error_ratio",
        title="Error rate",
        unit="",
        signal=(
            "(sum by (model_name, model_version) (rate(ai_model_prediction_errors_total[1m]))"
            f" or {PREDICTIONS_RATE} * 0)\n/ ({PREDICTIONS_RATE} > 0)"
        ),
        labels=MODEL,
        direction="rise",
        alert="ModelErrorRateAnomalous",
        spreads=4,
        min_change=0.02,
        relative_change=1.0,
        volume=ENOUGH_PREDICTIONS,
        team="platform_engineering",
        service="model-inference",
    ),
    AnomalyMetric(
        key="latency_p95_seconds",
        title="p95 latency",
        unit="s",
        signal=(
            "histogram_quantile(0.95, sum by (le, model_name, model_version)"
            " (rate(ai_model_inference_latency_seconds_bucket[1m]))) >= 0"
        ),
        labels=MODEL,
        direction="rise",
        alert="ModelLatencyAnomalous",
        spreads=4,
        min_change=0.05,
        relative_change=0.5,
        volume=ENOUGH_PREDICTIONS,
        team="platform_engineering",
        service="model-inference",
    ),
    AnomalyMetric(
        key="business_value_per_second",
        title="Business value",
        unit="per s",
        signal="sum by (model_name, metric_type) (rate(ai_business_value_total[1m]))",
        labels=("model_name", "metric_type"),
        direction="drop",
        alert="BusinessImpactAnomalous",
        spreads=4,
        min_change=0.0,
        relative_change=0.4,
        # Labels arriving at one every two seconds or more, so the value is not a handful of decisions.
        volume="sum by (model_name) (rate(ai_model_labelled_predictions_total[1m])) >= 0.5",
        team="product",
        service="business",
    ),
    AnomalyMetric(
        key="pipeline_error_ratio",
        title="Pipeline error rate",
        unit="",
        # From /v1/pipeline-runs' record counters; a pipeline known only from the Prefect API (no
        # counters) is judged on the pipeline-health flow's error rate instead.
        signal=(
            "(sum by (pipeline_name) (rate(ai_pipeline_record_errors_total[1m]))"
            f" or {PIPELINE_RECORDS_RATE} * 0)\n/ ({PIPELINE_RECORDS_RATE} > 0)"
        ),
        otherwise=(
            "max by (pipeline_name) (ai_pipeline_error_rate)"
            " unless on (pipeline_name) ai_pipeline_records_total"
        ),
        labels=("pipeline_name",),
        direction="rise",
        alert="PipelineErrorRateAnomalous",
        spreads=4,
        min_change=0.05,
        relative_change=1.0,
        volume="",
        team="data_engineering",
        service="data-pipeline",
    ),
)


OR = "\n  or "


def _seasonal(metric: AnomalyMetric, how: str) -> str:
    """The seasonal deviations of the day and week back, and 0, combined by `how` (min, max or avg)
    over a `season` label that only exists inside this expression."""
    deviation = metric.series("deviation")
    parts = [
        f'label_replace({deviation} offset {offset}, "season", "{name}", "", "")'
        for name, offset in SEASONS.items()
    ]
    if how == "avg":  # the expected value: the seasons' mean, or 0 where none is known yet
        known = f"avg without (season) (\n  {OR.join(parts)}\n)"
        return f"({known} or {metric.series('level')} * 0)"
    none = f'label_replace({metric.series("level")} * 0, "season", "none", "", "")'
    return f"{how} without (season) (\n  {OR.join([*parts, none])}\n)"


def over_a_minute(expr: str) -> str:
    """`expr` over the last minute; where a minute holds fewer than two samples (a Prometheus that
    scrapes every minute, as its default does, or less often), over five, then fifteen."""
    longer = [expr.replace("[1m]", f"[{window}]") for window in ("5m", "15m")]
    return "(\n  " + "\n)\nor (\n  ".join([expr, *longer]) + "\n)"


def signal_rules(metric: AnomalyMetric) -> list[dict[str, str]]:
    rate = metric.series("rate1m")
    signal = over_a_minute(metric.signal)
    if metric.otherwise:
        signal += f"\nor ({metric.otherwise})"
    return [
        {"record": rate, "expr": signal},
        {"record": metric.series("change1m"), "expr": f"{rate} - {rate} offset 1m"},
    ]


def baseline_rules(metric: AnomalyMetric) -> list[dict[str, str]]:
    rate, level = metric.series("rate1m"), metric.series("level")
    changes = f"{metric.series('change1m')}[{SPREAD_WINDOW}] offset {LEVEL_GAP}"
    tolerance = metric.series("tolerance")
    widest = (
        f"clamp_min({metric.spreads:g} * {metric.series('spread')}, {metric.min_change:g})"
        f" >= {metric.relative_change:g} * {level}"
    )
    edge = (
        f"{level}\n+ {_seasonal(metric, 'min')}\n- {tolerance}"
        if metric.direction == "drop"
        else f"{level}\n+ {_seasonal(metric, 'max')}\n+ {tolerance}"
    )
    return [
        {
            "record": level,
            "expr": f"quantile_over_time(0.5, {rate}[{LEVEL_WINDOW}] offset {LEVEL_GAP})"
            f"\nand {rate} offset {WARM_UP}",
        },
        {
            "record": metric.series("spread"),
            "expr": f"(\n  quantile_over_time(0.75, {changes})\n  - quantile_over_time(0.25, {changes})\n)"
            f" / {IQR_OF_CHANGES_PER_SPREAD}",
        },
        {"record": metric.series("deviation"), "expr": f"quantile_over_time(0.5, {rate}[2m]) - {level}"},
        {"record": tolerance, "expr": f"({widest})\nor {metric.relative_change:g} * {level}"},
        {"record": metric.series("expected"), "expr": f"{level}\n+ {_seasonal(metric, 'avg')}"},
        {"record": metric.series(metric.edge), "expr": edge},
    ]


def _describe(metric: AnomalyMetric) -> tuple[str, str]:
    subject = (
        "pipeline {{ $labels.pipeline_name }}"
        if metric.labels[0] == "pipeline_name"
        else ("{{ $labels.model_name }}")
    )
    value = "{{ $value | humanizePercentage }}" if metric.unit == "" else '{{ $value | printf "%.3g" }}'
    unit = f" {metric.unit}" if metric.unit else ""
    way = "fell below" if metric.direction == "drop" else "rose above"
    summary = f"{metric.title} of {subject} is off its normal"
    description = (
        f"{metric.title} of {subject} is {value}{unit} over the last minute: it {way} the band of its"
        " recent level, the same time yesterday and a week ago"
    )
    return summary, description


def alert_rule(metric: AnomalyMetric) -> dict[str, Any]:
    compare = "<" if metric.direction == "drop" else ">"
    expr = f"{metric.series('rate1m')} {compare} {metric.series(metric.edge)}"
    if metric.volume:
        on = metric.by if metric.labels == MODEL else "model_name"  # business value: the model's labels
        expr += f"\nand on ({on}) (\n{over_a_minute(metric.volume)}\n)"
    summary, description = _describe(metric)
    return {
        "alert": metric.alert,
        "expr": expr,
        "for": metric.for_,
        "keep_firing_for": KEEP_FIRING_FOR,
        "labels": {"severity": "warning", "team": metric.team, "service": metric.service},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": RUNBOOK + metric.runbook,
        },
    }


HEADER = """\
# Anomalies against each metric's normal, rendered from watchkeeper/anomalies.py (edit the table
# there, then: python -m watchkeeper.anomalies > infra/prometheus/rules/watchkeeper-anomalies.yml).
# Per metric: its last minute (rate1m), the level (median of ten minutes ending a minute ago, once
# the signal is ten minutes old), the spread (noise, from minute-to-minute changes over an hour),
# the deviation from the level at this time one day and one week back, and the band's edge. The
# alert fires when the last minute leaves the band in the metric's direction. Tested by
# infra/prometheus/tests/anomalies_test.yml (a compressed week of seasonal series).
"""


def rules() -> dict[str, Any]:
    return {
        "groups": [
            {
                "name": "ai_anomaly_signals",
                "rules": [rule for metric in METRICS for rule in signal_rules(metric)],
            },
            {
                "name": "ai_anomaly_baselines",
                "interval": BASELINE_INTERVAL,
                "rules": [rule for metric in METRICS for rule in baseline_rules(metric)],
            },
            {"name": "ai_anomaly_alerts", "rules": [alert_rule(metric) for metric in METRICS]},
        ]
    }


class _Literal(str):
    """A multi-line expression, written as a YAML block."""


def _block(dumper: yaml.SafeDumper, text: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")


def _blocks(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _blocks(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_blocks(v) for v in value]
    if isinstance(value, str) and "\n" in value:
        return _Literal(value)
    return value


def render() -> str:
    dumper = type("Dumper", (yaml.SafeDumper,), {})
    dumper.add_representer(_Literal, _block)
    body = yaml.dump(_blocks(rules()), Dumper=dumper, sort_keys=False, width=10_000)
    return HEADER + body


if __name__ == "__main__":
    sys.stdout.write(render())
