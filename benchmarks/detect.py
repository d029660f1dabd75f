"""Time to detect: bad labels into the intake until Alertmanager's webhook for ModelAccuracyCritical arrives.

Real parts: the Watchkeeper service over a SQLite store, Debian's Prometheus with the shipped
rules and scrape/evaluation intervals, Debian's Alertmanager with the shipped routes. Quality is
collected on the example config's collect-model-metrics schedule (every minute) by the same task
code the flow runs. Each run uses its own model, so runs do not disturb one another.

Baseline: the seed's promise of detection under 2 minutes (120 s) for critical failures;
`ratio_to_seed_promise` = median / 120. The shipped rule holds `for: 2m` (the seed's own
duration), so the floor is 120 s plus collection, scrape, evaluation and grouping.

Usage: python benchmarks/detect.py [--runs 3]; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.metrics import Window  # noqa: E402
from tests.conftest import LiveService  # noqa: E402
from tests.realstack import AlertingStack, WebhookRecorder, collect_quality, post_labelled_predictions  # noqa: E402
from watchkeeper.config import load_config  # noqa: E402
from watchkeeper.settings import DEFAULT_CONFIG  # noqa: E402
from watchkeeper.store import Store  # noqa: E402

ALERT = "ModelAccuracyCritical"
SEED_PROMISE_SECONDS = 120.0
POLL_SECONDS = 0.25


class ScheduledCollector(threading.Thread):
    """collect-model-metrics' quality step for every model, every `interval` seconds, recording when."""

    def __init__(self, store: Store, models: list, interval: float) -> None:
        super().__init__(daemon=True)
        self.store, self.models, self.interval = store, models, interval
        self.collected_bad: dict[str, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            now = datetime.now(UTC)
            for model in self.models:
                accuracy = collect_quality(self.store, model, Window(now - model.windows.quality, now))
                if accuracy is not None and accuracy < 0.75:
                    self.collected_bad.setdefault(model.name, time.monotonic())


def first_time(check, deadline: float) -> float:  # noqa: ANN001
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(POLL_SECONDS)
    raise TimeoutError("the alert did not arrive")


def measure_run(
    model: str,
    service_url: str,
    stack: AlertingStack,
    collector: ScheduledCollector,
    recorder: WebhookRecorder,
) -> dict[str, float]:
    """Post bad labels for `model` and time each step until its firing webhook arrives."""
    selector = f'model_name="{model}"'
    started = time.monotonic()
    deadline = started + 600

    def delivered() -> list[float]:
        return [t for t, a in recorder.alerts(ALERT, "firing") if a["labels"]["model_name"] == model]

    post_labelled_predictions(service_url, model, datetime.now(UTC) - timedelta(seconds=5), 300, False, model)
    first_time(lambda: model in collector.collected_bad, deadline)
    collected = collector.collected_bad[model]
    scraped = first_time(lambda: stack.query(f"ai_model_accuracy_score{{{selector}}} < 0.75"), deadline)
    pending = first_time(lambda: stack.query(f'ALERTS{{alertname="{ALERT}",{selector}}}'), deadline)
    firing = first_time(
        lambda: stack.query(f'ALERTS{{alertname="{ALERT}",alertstate="firing",{selector}}}'), deadline
    )
    first_time(delivered, deadline)
    arrival = min(delivered())
    return {
        "collection": collected - started,
        "scrape": scraped - collected,
        "evaluation": pending - scraped,
        "for": firing - pending,
        "grouping_and_delivery": arrival - firing,
        "total": arrival - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    example = load_config(DEFAULT_CONFIG)
    template = example.models[0]
    models = [template.model_copy(update={"name": f"detect_run_{i}"}) for i in range(args.runs)]
    config = example.model_copy(update={"models": models})
    collect_every = config.schedules.collect_model_metrics.total_seconds()
    folder = Path(tempfile.mkdtemp(prefix="watchkeeper-detect-"))
    store = Store(f"sqlite:///{folder / 'store.db'}")
    store.upgrade()
    recorder = WebhookRecorder()
    phases: list[dict[str, float]] = []
    with LiveService(config, store) as service:
        stack = AlertingStack(folder, service.url, recorder.url)
        collector = ScheduledCollector(store, models, collect_every)
        try:
            stack.wait_ready()
            collector.start()
            print(
                f"collect every {collect_every:.0f} s, scrape {stack.scrape_interval}, rules from infra/",
                flush=True,
            )
            for model in models:
                phase = measure_run(model.name, service.url, stack, collector, recorder)
                phases.append(phase)
                print(" ".join(f"{k}={v:.1f}s" for k, v in phase.items()), flush=True)
        finally:
            collector.stopping.set()
            stack.stop()
            recorder.stop()
    totals = [p["total"] for p in phases]
    median = statistics.median(totals)
    print(
        json.dumps(
            {
                "baseline": "seed promise: critical failures detected in under 120 s",
                "runs": len(phases),
                "time_to_detect_seconds": {
                    "min": round(min(totals), 1),
                    "median": round(median, 1),
                    "max": round(max(totals), 1),
                },
                "median_phase_seconds": {
                    k: round(statistics.median(p[k] for p in phases), 1) for k in phases[0] if k != "total"
                },
                "ratio_to_seed_promise": round(median / SEED_PROMISE_SECONDS, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
