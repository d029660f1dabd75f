"""The intake's writer alone: CPU a prediction and a label costs to store, by models in a group.

The service's group commit writes every batch waiting in one transaction, so a group at fifty
models holds a few records of each model, where at one model it holds hundreds of one. This runs
the intake's own writers in this process (no HTTP, no parsing) on a fresh SQLite store with the
example model's reference: `--predictions` predictions of the example's traffic spread round-robin
over `--models` models, stored in groups of `--group` records, then labels for 80 % of them in
groups of the same size. All are in one time bucket, so most of a model's few hundred go to its
drift sample (the first 200 of a model's bucket always do), as at low traffic a model. CPU is this
process's (`time.process_time`), the best of `--runs` runs.
Baseline: the same writer at one model (`--models 1`), where a group's records share their series.
`--model demand_forecast` or `product_recommendations` copies the example's regression or ranking
model instead of the credit classifier, with its demo's traffic and reference (its cost per record
beside the classifier's).

Usage: python benchmarks/writer.py [--models 50] [--group 500] [--predictions 20000] [--runs 3]
[--model credit_approval]; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.volume import bench_config  # noqa: E402


def traffic_of(task: str) -> Any:
    """The demo traffic of a model's task, with a 5,000-row reference."""
    from watchkeeper.local.demo import DemoTraffic
    from watchkeeper.local.demo_kinds import demo_of

    demo = DemoTraffic if task == "binary" else demo_of(task)
    return demo(train_size=2000, seed=11, reference_size=5000)


def run_once(models: int, group: int, predictions: int, template: str) -> dict[str, float]:
    """One fresh store: CPU µs a prediction and a label."""
    with tempfile.TemporaryDirectory(prefix="writer-bench-") as folder:
        home = Path(folder)
        os.environ["WATCHKEEPER_HOME"] = str(home)
        os.environ["WATCHKEEPER_CONFIG"] = str(bench_config(home, models, None, template_name=template))
        os.environ.pop("WATCHKEEPER_DATABASE_URL", None)
        from tasks.references import reference_profiles
        from watchkeeper.intake.records import FeedbackRecord, PredictionRecord
        from watchkeeper.local.demo import write_reference
        from watchkeeper.settings import Settings
        from watchkeeper.store.intake import IntakeRules, feedback_writer, prediction_writer

        settings = Settings()
        config, store = settings.monitoring, settings.open_store()
        try:
            store.upgrade()
            names = [m.name for m in config.models][:models]
            traffic = traffic_of(config.models[0].task)
            for model in config.models:
                if model.reference:
                    write_reference(traffic.reference, model.reference.path)
            rules = IntakeRules.of(config, reference_profiles(store, config))
            for name in names:  # references are read once a process, not per transaction
                rules.profile_for(name)
            events = traffic.next_batch(5000)
            now = datetime.now(UTC)
            records = [
                PredictionRecord(
                    model_name=names[i % models],
                    model_version="v1",
                    request_id=f"r-{i}",
                    timestamp=now,
                    features=events[i % len(events)].features,
                    prediction=events[i % len(events)].prediction,
                    score=getattr(events[i % len(events)], "score", None),
                    latency_seconds=events[i % len(events)].latency_seconds,
                    error=getattr(events[i % len(events)], "error", False),
                )
                for i in range(predictions)
            ]
            labels = [
                FeedbackRecord(model_name=r.model_name, request_id=r.request_id, label=events[i % 5000].label)
                for i, r in enumerate(records)
                if i % 5
            ]
            stored = {}
            for name, writer, batch in (
                ("prediction", prediction_writer(rules), records),
                ("label", feedback_writer(rules), labels),
            ):
                started = time.process_time()
                for start in range(0, len(batch), group):
                    writer.store(store, [batch[start : start + group]])
                stored[name] = 1e6 * (time.process_time() - started) / len(batch)
            return stored
        finally:
            store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--group", type=int, default=500)
    parser.add_argument("--predictions", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--model",
        default="credit_approval",
        choices=["credit_approval", "demand_forecast", "product_recommendations"],
    )
    args = parser.parse_args()
    runs = [run_once(args.models, args.group, args.predictions, args.model) for _ in range(args.runs)]
    result = {
        "model": args.model,
        "models": args.models,
        "group": args.group,
        "predictions": args.predictions,
        "prediction_cpu_us": round(min(r["prediction"] for r in runs), 1),
        "label_cpu_us": round(min(r["label"] for r in runs), 1),
        "runs": runs,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
