"""The anomaly rules' promtool cases: eight and a half days of seasonal series, one scenario per
model (`python -m tests.seasonal > infra/prometheus/tests/anomalies_test.yml`; a test checks the
committed file is current).

Traffic has a daily cycle (a night trough at a third of the afternoon peak), weekends at 60 % of
the weekday's daytime traffic, slow growth and noise. Counters are written per minute, with the
rate held for ten-minute steps (promtool's `a+bxn` notation keeps the file small). Day 0 is a
Monday; every off-pattern change happens on day 8, a Tuesday, at 14:00 unless said otherwise.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

STEP_MINUTES = 10
DAYS = 8
END_MINUTE = DAYS * 1440 + 16 * 60  # day 8, 16:00
FAULT_MINUTE = DAYS * 1440 + 14 * 60
RUNBOOK = "http://127.0.0.1:8765/runbooks/"


def daytime(minute: int) -> float:
    """0 at 03:00, 1 at 15:00: the daily cycle's shape."""
    hour = (minute % 1440) / 60
    return (1 - math.cos(2 * math.pi * (hour - 3) / 24)) / 2


def weekday_factor(minute: int, holidays: tuple[int, ...] = ()) -> float:
    day = minute // 1440
    if day in holidays:
        return 0.3
    return 0.6 if day % 7 in (5, 6) else 1.0


def traffic(minute: int, peak: float, holidays: tuple[int, ...] = ()) -> float:
    """Requests per second: a third of the peak at night, the daytime part scaled on weekends and
    holidays, growing 2 % a day."""
    growth = 1 + 0.02 * minute / 1440
    night = peak / 3
    return growth * (night + (peak - night) * daytime(minute) * weekday_factor(minute, holidays))


Rate = Callable[[int], float]


def counter(rate: Rate, seed: int, noise: float = 0.03, every: int = 1, end: int = END_MINUTE) -> str:
    """A counter sampled every `every` minutes until minute `end`, whose rate (per second) is `rate`
    at each ten-minute step, with noise."""
    rng = np.random.default_rng(seed)
    parts, total = [], 0.0
    samples = STEP_MINUTES // every
    for start in range(0, end, STEP_MINUTES):
        per_sample = max(0.0, rate(start) * 60 * every * (1 + noise * rng.standard_normal()))
        step = round(per_sample, 1)
        parts.append(f"{number(total)}+{number(step)}x{samples - 1}")
        total += step * samples
    parts.append(number(total))
    return " ".join(parts)


def number(value: float) -> str:
    """Every digit to the tenth (`:g` would round a counter past a million, and a rounded-down
    total reads as a counter reset)."""
    return f"{value:.1f}".removesuffix(".0")


def during(start: int, minutes: int) -> Callable[[int], bool]:
    return lambda m: start <= m < start + minutes


@dataclass(frozen=True)
class Series:
    name: str
    labels: dict[str, str]
    values: str

    def yaml(self) -> str:
        labels = ", ".join(f'{k}="{v}"' for k, v in self.labels.items())
        return f"      - series: '{self.name}{{{labels}}}'\n        values: '{self.values}'\n"


def model(name: str, version: str = "v1") -> dict[str, str]:
    return {"model_name": name, "model_version": version}


def named(name: str) -> dict[str, str]:
    """The labels of a model's throughput and business series: traffic is the model's, not a version's."""
    return {"model_name": name}


def predictions(name: str, rate: Rate, seed: int) -> Series:
    return Series("watchkeeper_predictions_total", model(name), counter(rate, seed))


fault = during(FAULT_MINUTE, 30)
SHIFT_MINUTE = DAYS * 1440 + 10 * 60


def switched(minute: int) -> bool:
    return minute >= DAYS * 1440 + 12 * 60


def base(minute: int) -> float:
    return traffic(minute, 60)


def changed(rate: Rate, factor: float, when: Callable[[int], bool]) -> Rate:
    """`rate`, times `factor` while `when`."""
    return lambda m: rate(m) * (factor if when(m) else 1)


def nightly_batch(minute: int) -> bool:
    """A client that doubles the traffic from 20:00 and stops at 22:00 every day: a sharp drop the
    recent level cannot foresee, and the day and week back can."""
    return 20 * 60 <= minute % 1440 < 22 * 60


def labelled(minute: int) -> float:
    return base(minute) * 0.8


def approved_value(minute: int) -> float:
    """Value per second of correct positive decisions: 30 % of labels, worth 250 each."""
    return labelled(minute) * 0.3 * 250


def pipeline_records(minute: int) -> float:
    return base(minute) / 2


def scenarios() -> list[Series]:
    series = [
        predictions("seasonal", base, 1),
        predictions("drop", changed(base, 0.3, fault), 2),
        predictions("trough_drop", changed(base, 0.2, during(DAYS * 1440 + 3 * 60, 30)), 3),
        predictions("nightly_batch", changed(base, 2, nightly_batch), 4),
        # A holiday on day 1: the daytime traffic of a weekend's half; a week later, a normal Tuesday.
        predictions("holiday", lambda m: traffic(m, 60, holidays=(1,)), 5),
        predictions("level_shift", changed(base, 0.5, lambda m: m >= SHIFT_MINUTE), 6),
        predictions("tiny", changed(lambda m: traffic(m, 0.6), 0.1, fault), 7),
        # v2 takes all the traffic from day 8, 12:00; v1's counter stays where it was.
        Series(
            "watchkeeper_predictions_total", model("version_switch"), counter(changed(base, 0, switched), 16)
        ),
        Series(
            "watchkeeper_predictions_total",
            model("version_switch", "v2"),
            counter(lambda m: base(m) if switched(m) else 0.0, 17),
        ),
    ]
    # Errors: about 1 % of requests, 12 % during the fault.
    for name, seed, burst in (("errors", 8, 12.0), ("errors_quiet", 9, 1.0)):
        errors = changed(lambda m: base(m) * 0.01, burst, fault)
        series.append(predictions(name, base, seed))
        series.append(
            Series("ai_model_prediction_errors_total", model(name), counter(errors, seed + 100, 0.2))
        )
    series += latency_series()
    for name, seed, drop in (("value", 10, 0.3), ("value_quiet", 11, 1.0)):
        value = counter(changed(approved_value, drop, fault), seed + 100, noise=0.08)
        series.append(Series("ai_model_labelled_predictions_total", model(name), counter(labelled, seed)))
        series.append(
            Series("ai_business_value_total", {"model_name": name, "metric_type": "approved_value"}, value)
        )
    for name, seed, failing in (("features", 12, 200.0), ("features_quiet", 13, 1.0)):
        stage = {"pipeline_name": name, "stage": "transform"}
        errors = changed(lambda m: pipeline_records(m) * 0.005, failing, fault)
        series.append(Series("ai_pipeline_records_total", stage, counter(pipeline_records, seed)))
        series.append(
            Series("ai_pipeline_record_errors_total", stage, counter(errors, seed + 100, noise=0.3))
        )
    return series


LATENCY_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0)


def share_faster(bound: float, minute: int, spike: bool) -> float:
    """The share of requests answered within `bound`: log-logistic around a median that rises with
    load (50 ms at night, 110 ms in the afternoon), 400 ms during a spike."""
    median = 0.4 if spike and fault(minute) else 0.05 + 0.06 * daytime(minute)
    return 1 / (1 + math.exp(-(math.log(bound) - math.log(median)) / 0.35))


def latency_series() -> list[Series]:
    """Latency buckets: p95 near 0.14 s at night and 0.3 s in the busy afternoon, and beyond the
    last finite bucket during the fault of `latency`."""
    out = []
    for name, seed, spike in (("latency", 14, True), ("latency_quiet", 15, False)):
        out.append(predictions(name, base, seed))
        for i, bound in enumerate(LATENCY_BOUNDS):
            within = counter(lambda m, b=bound, s=spike: base(m) * share_faster(b, m, s), seed + 200 + i, 0.0)
            bucket = {**model(name), "le": f"{bound:g}"}
            out.append(Series("ai_model_inference_latency_seconds_bucket", bucket, within))
        every = {**model(name), "le": "+Inf"}
        out.append(Series("ai_model_inference_latency_seconds_bucket", every, counter(base, seed + 300, 0.0)))
    return out


def at(day: int, hour: int, minute: int = 0) -> str:
    return f"{day * 1440 + hour * 60 + minute}m"


def firing(alert: str, labels: dict[str, str]) -> str:
    selector = ", ".join(f'{k}="{v}"' for k, v in {"alertname": alert, **labels}.items())
    return f'ALERTS{{{selector}, alertstate="firing"}}'


def fires(alert: str, labels: dict[str, str], when: str, team: str, service: str) -> str:
    sample = {"alertname": alert, "alertstate": "firing", **labels}
    sample |= {"severity": "warning", "team": team, "service": service}
    text = ", ".join(f'{k}="{v}"' for k, v in sample.items())
    return (
        f"      - expr: '{firing(alert, labels)}'\n        eval_time: {when}\n"
        f"        exp_samples:\n          - labels: 'ALERTS{{{text}}}'\n            value: 1\n"
    )


def never(alert: str, labels: dict[str, str], when: str, lookback: str) -> str:
    """Not firing at any evaluation of the `lookback` before `when` (ALERTS is kept per evaluation)."""
    expr = f"count_over_time({firing(alert, labels)}[{lookback}])"
    return f"      - expr: '{expr}'\n        eval_time: {when}\n        exp_samples: []\n"


MODEL_ALERT = {"team": "platform_engineering", "service": "model-inference"}


def checks() -> str:
    out = []
    whole = f"{END_MINUTE - 1}m"
    throughput = "ModelThroughputAnomalous"
    # Fires within two minutes of an off-pattern drop at the afternoon peak and in the night trough.
    out.append(fires(throughput, named("drop"), at(DAYS, 14, 2), **MODEL_ALERT))
    out.append(fires(throughput, named("trough_drop"), at(DAYS, 3, 2), **MODEL_ALERT))
    out.append(never(throughput, named("drop"), at(DAYS, 13, 59), f"{DAYS}d"))
    # Quiet through eight daily troughs, a weekend, a holiday (and its weekday a week later), growth.
    for name in ("seasonal", "holiday", "errors_quiet", "latency_quiet", "value_quiet"):
        out.append(never(throughput, model(name), whole, f"{DAYS + 1}d"))
    # The nightly batch stops at 22:00: the first night it is news; from the second, yesterday knew it.
    out.append(fires(throughput, named("nightly_batch"), at(0, 22, 2), **MODEL_ALERT))
    out.append(never(throughput, named("nightly_batch"), whole, f"{DAYS - 1}d12h"))
    # A level shift pages, then becomes the level: resolved within half an hour.
    out.append(fires(throughput, named("level_shift"), at(DAYS, 10, 2), **MODEL_ALERT))
    out.append(never(throughput, named("level_shift"), at(DAYS, 10, 40), "5m"))
    # A model of under one request per second dropping 90 %: less than the minimum change.
    out.append(never(throughput, named("tiny"), whole, f"{DAYS + 1}d"))
    # Traffic moving from v1 to v2 is not a drop: throughput is the model's, not a version's.
    out.append(never(throughput, named("version_switch"), whole, f"{DAYS + 1}d"))
    for alert, name, quiet, labels in (
        ("ModelErrorRateAnomalous", "errors", "errors_quiet", MODEL_ALERT),
        ("ModelLatencyAnomalous", "latency", "latency_quiet", MODEL_ALERT),
    ):
        out.append(fires(alert, model(name), at(DAYS, 14, 2), **labels))
        out.append(never(alert, model(name), at(DAYS, 13, 59), f"{DAYS}d"))
        out.append(never(alert, model(quiet), whole, f"{DAYS + 1}d"))
    value = {"model_name": "value", "metric_type": "approved_value"}
    business = {"team": "product", "service": "business"}
    out.append(fires("BusinessImpactAnomalous", value, at(DAYS, 14, 2), **business))
    out.append(never("BusinessImpactAnomalous", value, at(DAYS, 13, 59), f"{DAYS}d"))
    out.append(never("BusinessImpactAnomalous", {"model_name": "value_quiet"}, whole, f"{DAYS + 1}d"))
    data = {"team": "data_engineering", "service": "data-pipeline"}
    out.append(fires("PipelineErrorRateAnomalous", {"pipeline_name": "features"}, at(DAYS, 14, 2), **data))
    out.append(
        never("PipelineErrorRateAnomalous", {"pipeline_name": "features"}, at(DAYS, 13, 59), f"{DAYS}d")
    )
    out.append(
        never("PipelineErrorRateAnomalous", {"pipeline_name": "features_quiet"}, whole, f"{DAYS + 1}d")
    )
    return "".join(out)


def quiet_everywhere(when: str) -> str:
    """alert_rule_test: no anomaly alert of any model at `when` (a weekday evening before the faults)."""
    names = (
        "ModelThroughputAnomalous",
        "ModelErrorRateAnomalous",
        "ModelLatencyAnomalous",
        "BusinessImpactAnomalous",
        "PipelineErrorRateAnomalous",
    )
    return "".join(
        f"      - eval_time: {when}\n        alertname: {n}\n        exp_alerts: []\n" for n in names
    )


COARSE_END = 2 * 1440 + 16 * 60


def coarse_test() -> str:
    """A Prometheus scraping every five minutes: a minute holds one sample at most, so the signals
    fall back to five- and fifteen-minute rates. Two days; a drop to 30 % on day 1 at 14:00 pages
    once fifteen minutes hold nothing else (three scrapes), the troughs do not."""
    drop = during(1440 + 14 * 60, 30)
    series = [
        Series("watchkeeper_predictions_total", model("coarse"), counter(base, 18, every=5, end=COARSE_END)),
        Series(
            "watchkeeper_predictions_total",
            model("coarse_drop"),
            counter(changed(base, 0.3, drop), 19, every=5, end=COARSE_END),
        ),
    ]
    checks = [
        fires("ModelThroughputAnomalous", named("coarse_drop"), at(1, 14, 13), **MODEL_ALERT),
        never("ModelThroughputAnomalous", named("coarse_drop"), at(1, 13, 59), "1d13h"),
        never("ModelThroughputAnomalous", named("coarse"), f"{COARSE_END - 1}m", "3d"),
    ]
    body = "".join(s.yaml() for s in series)
    return f"  - interval: 5m\n    input_series:\n{body}    promql_expr_test:\n{''.join(checks)}"


def document() -> str:
    header = (__doc__ or "").strip().splitlines()
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header)
    body = "".join(s.yaml() for s in scenarios())
    return (
        f"{comment}rule_files:\n  - ../rules/watchkeeper-anomalies.yml\nevaluation_interval: 1m\n"
        # As Prometheus runs them: the signals, then the bands, then the alerts on both. Unordered,
        # promtool could judge a minute's signal against the band a minute behind.
        f"group_eval_order: [ai_anomaly_signals, ai_anomaly_baselines, ai_anomaly_alerts]\n\n"
        f"tests:\n  - interval: 1m\n    input_series:\n{body}"
        f"    alert_rule_test:\n{quiet_everywhere(at(7, 19))}"
        f"    promql_expr_test:\n{checks()}\n{coarse_test()}"
    )


if __name__ == "__main__":
    sys.stdout.write(document())
