"""What the anomaly rules cost Prometheus: the series they add per model, and their evaluation time
at N models.

Real parts: Debian's Prometheus, evaluating every 5 s (as the shipped prometheus.yml does) the
shipped rule files, and scraping every 5 s an exporter on loopback that serves the intake's
counters of N models, each with one pipeline and one business metric (predictions, failed
predictions, latency buckets, labels, business value, pipeline records and failed records). So that
the hour-long windows are full from the start, as on a Prometheus that has run for a day, the
signals the rules record are backfilled with promtool for the 70 minutes before it starts.

Two runs on the same exporter: the fixed rules alone (watchkeeper-alerts.yml), then the fixed and
the anomaly rules. Evaluation time is each rule group's `prometheus_rule_group_last_duration_seconds`
averaged over the last minute of a 3-minute run.

Baseline: the evaluation interval (5 s), the time each cycle has; `ratio_to_interval` = the anomaly
groups' evaluation seconds per cycle / 5.

Usage: python benchmarks/anomaly_rules.py [--models 50] [--seconds 180]; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchkeeper.anomalies import METRICS  # noqa: E402
from watchkeeper.local.stack import INFRA, free_ports  # noqa: E402

INTERVAL_SECONDS = 5
RULES = INFRA / "prometheus" / "rules"
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0)
RATE = 10.0
HISTORY_MINUTES = 70


def exposition(models: int, elapsed: float) -> str:
    """Every model's counters after `elapsed` seconds at 10 rps: 1 % failing, 80 % labelled."""
    lines = []
    n = RATE * elapsed
    for i in range(models):
        model = f'model_name="m{i}",model_version="v1"'
        lines.append(f"watchkeeper_predictions_total{{{model}}} {n:.0f}")
        lines.append(f"ai_model_prediction_errors_total{{{model}}} {n * 0.01:.0f}")
        lines.append(f"ai_model_labelled_predictions_total{{{model}}} {n * 0.8:.0f}")
        for k, le in enumerate(BUCKETS):
            lines.append(
                f'ai_model_inference_latency_seconds_bucket{{{model},le="{le}"}} {n * (k + 5) / 10:.0f}'
            )
        lines.append(f'ai_model_inference_latency_seconds_bucket{{{model},le="+Inf"}} {n:.0f}')
        lines.append(f'ai_business_value_total{{model_name="m{i}",metric_type="value"}} {n * 60:.0f}')
        pipeline = f'pipeline_name="m{i}_pipeline",stage="features"'
        lines.append(f"ai_pipeline_records_total{{{pipeline}}} {n:.0f}")
        lines.append(f"ai_pipeline_record_errors_total{{{pipeline}}} {n * 0.005:.0f}")
    return "\n".join(lines) + "\n"


def serve_counters(port: int, models: int) -> ThreadingHTTPServer:
    started = time.monotonic()

    class Exporter(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = exposition(models, time.monotonic() - started + 3600).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Exporter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def history(models: int, end: float) -> str:
    """The recorded signals of the 70 minutes before `end`, every 5 s, as OpenMetrics."""
    values = {"throughput_rps": RATE, "error_ratio": 0.01, "latency_p95_seconds": 0.2}
    values |= {"business_value_per_second": RATE * 60, "pipeline_error_ratio": 0.005}
    lines = []
    steps = range(HISTORY_MINUTES * 60 // INTERVAL_SECONDS, 0, -1)
    for metric in METRICS:
        for part in ("rate1m", "change1m"):
            name = metric.series(part)
            lines.append(f"# TYPE {name} gauge")
            for i in range(models):
                labels = {
                    "model_name": f"m{i}",
                    "model_version": "v1",
                    "metric_type": "value",
                    "pipeline_name": f"m{i}_pipeline",
                }
                selector = ",".join(f'{k}="{labels[k]}"' for k in metric.labels)
                for j, step in enumerate(steps):
                    value = (
                        values[metric.key] * (1 + 0.02 * ((j * 7 + i) % 5 - 2)) if part == "rate1m" else 0.0
                    )
                    lines.append(f"{name}{{{selector}}} {value:.6g} {end - step * INTERVAL_SECONDS:.0f}")
    return "\n".join([*lines, "# EOF", ""])


def run(folder: Path, models: int, seconds: float, rule_files: list[str]) -> dict:
    ports = free_ports()
    folder.mkdir(parents=True)
    data = folder / "data"
    source = folder / "history.om"
    source.write_text(history(models, time.time() - 60))
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        check=True,
        capture_output=True,
    )
    exporter = serve_counters(ports["notifications"], models)
    config = folder / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {
                    "scrape_interval": f"{INTERVAL_SECONDS}s",
                    "evaluation_interval": f"{INTERVAL_SECONDS}s",
                },
                "rule_files": [str(RULES / f) for f in rule_files],
                "scrape_configs": [
                    {
                        "job_name": "exporter",
                        "static_configs": [{"targets": [f"127.0.0.1:{ports['notifications']}"]}],
                    },
                    {
                        "job_name": "prometheus",
                        "static_configs": [{"targets": [f"127.0.0.1:{ports['prometheus']}"]}],
                    },
                ],
            }
        )
    )
    url = f"http://127.0.0.1:{ports['prometheus']}"
    argv = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
    ]
    with (folder / "prometheus.log").open("wb") as log:
        prometheus = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(seconds)

        def query(expr: str) -> list[dict]:
            return httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=30).json()["data"][
                "result"
            ]

        groups = {
            g["metric"]["rule_group"].split(";")[-1]: float(g["value"][1])
            for g in query("avg_over_time(prometheus_rule_group_last_duration_seconds[1m])")
        }
        series = query('count({__name__=~"ai_anomaly:.+"})')
        return {"groups": groups, "anomaly_series": float(series[0]["value"][1]) if series else 0.0}
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=60)
        exporter.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=180.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="watchkeeper-anomaly-rules-") as folder:
        fixed = run(Path(folder) / "fixed", args.models, args.seconds, ["watchkeeper-alerts.yml"])
        both = run(
            Path(folder) / "both",
            args.models,
            args.seconds,
            ["watchkeeper-alerts.yml", "watchkeeper-anomalies.yml"],
        )
    anomaly = {g: s for g, s in both["groups"].items() if g.startswith("ai_anomaly_")}
    # The baselines' group runs every 30 s: per 5-s cycle it costs a sixth of one evaluation.
    per_cycle = sum(s / 6 if g == "ai_anomaly_baselines" else s for g, s in anomaly.items())
    fixed_seconds = sum(fixed["groups"].values())
    result = {
        "models": args.models,
        "series_per_model": round(both["anomaly_series"] / args.models, 1),
        "anomaly_group_seconds": {g: round(s, 5) for g, s in anomaly.items()},
        "anomaly_seconds_per_cycle": round(per_cycle, 5),
        "fixed_rules_seconds_per_cycle": round(fixed_seconds, 5),
        "baseline": f"the evaluation interval ({INTERVAL_SECONDS} s)",
        "ratio_to_interval": round(per_cycle / INTERVAL_SECONDS, 5),
    }
    print(
        f"{args.models} models: {result['series_per_model']} anomaly series per model; anomaly rules "
        f"{per_cycle * 1000:.1f} ms per cycle, fixed rules {fixed_seconds * 1000:.1f} ms",
        flush=True,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
