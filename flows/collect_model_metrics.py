"""collect-model-metrics: labels that arrived before their predictions are joined and the intake's
tallies folded; then per model, traffic over the metrics window; quality, estimated quality and
segments over the quality window, each a sum of the window's buckets."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks.metrics import (
    bucket_window,
    collect_model,
    compact_tallies,
    join_labels,
)
from tasks.references import model_reference, reference_profiles
from watchkeeper.settings import Settings
from watchkeeper.store.intake import IntakeRules
from watchkeeper.store.samples import Sampling
from watchkeeper.times import utcnow


@flow(name="collect-model-metrics", log_prints=True)
def collect_model_metrics(models: list[str] | None = None) -> dict[str, int]:
    cpu = time.thread_time()
    settings = Settings()
    config = settings.monitoring
    store = settings.open_store()
    join_labels(store, IntakeRules.of(config, reference_profiles(store, config)))
    compact_tallies(store, Sampling.of(config))
    end = utcnow()
    bucket = int(config.intake.bucket.total_seconds())
    stored: dict[str, int] = {}
    for model in config.models:
        if models and model.name not in models:
            continue
        traffic_window = bucket_window(end, model.windows.metrics, bucket)
        quality_window = bucket_window(end, model.windows.quality, bucket)
        reference = model_reference(store, config, model)
        stored[model.name] = collect_model(
            store, model, traffic_window, quality_window, reference, flow_run.id
        )
        get_run_logger().info("%s: %d results for the window ending %s", model.name, stored[model.name], end)
    # What monitoring costs: this thread's CPU (the warm executor runs each flow in a thread of its own).
    get_run_logger().info(
        "collection cycle: %.4f s CPU for %d models", time.thread_time() - cpu, max(1, len(stored))
    )
    return stored
