"""collect-model-metrics: labels that arrived before their predictions are joined and the intake's
tallies folded; then per model, traffic over the metrics window; quality, estimated quality and
segments over the quality window, each a sum of the window's buckets."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks.metrics import (
    bucket_window,
    compact_tallies,
    join_labels,
    measure_quality,
    measure_traffic,
    record_results,
)
from tasks.references import model_reference, reference_profiles
from watchkeeper.settings import Settings
from watchkeeper.store.intake import IntakeRules
from watchkeeper.times import utcnow


@flow(name="collect-model-metrics", log_prints=True)
def collect_model_metrics(models: list[str] | None = None) -> dict[str, int]:
    settings = Settings()
    config = settings.monitoring
    store = settings.open_store()
    join_labels(store, IntakeRules.of(config, reference_profiles(store, config)))
    compact_tallies(store)
    end = utcnow()
    bucket = int(config.intake.bucket.total_seconds())
    stored: dict[str, int] = {}
    for model in config.models:
        if models and model.name not in models:
            continue
        traffic_window = bucket_window(end, model.windows.metrics, bucket)
        quality_window = bucket_window(end, model.windows.quality, bucket)
        traffic = measure_traffic(store, model, traffic_window)
        quality = measure_quality(store, model, quality_window, model_reference(store, config, model))
        stored[model.name] = record_results(
            store, model, traffic_window, {"model_traffic": traffic}, flow_run.id
        ) + record_results(store, model, quality_window, quality, flow_run.id)
        get_run_logger().info("%s: %d results for the window ending %s", model.name, stored[model.name], end)
    return stored
