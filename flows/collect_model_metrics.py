"""collect-model-metrics: per model, traffic over the metrics window; quality, estimated quality and
segments over the quality window; then the intake's tallies are compacted."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks.metrics import Window, compact_tallies, measure_quality, measure_traffic, record_results
from tasks.references import model_reference
from watchkeeper.settings import Settings
from watchkeeper.times import utcnow


@flow(name="collect-model-metrics", log_prints=True)
def collect_model_metrics(models: list[str] | None = None) -> dict[str, int]:
    settings = Settings()
    config = settings.monitoring
    store = settings.open_store()
    end = utcnow()
    stored: dict[str, int] = {}
    for model in config.models:
        if models and model.name not in models:
            continue
        traffic_window = Window(end - model.windows.metrics, end)
        quality_window = Window(end - model.windows.quality, end)
        traffic = measure_traffic(store, model, traffic_window)
        quality = measure_quality(store, model, quality_window, model_reference(store, config, model))
        stored[model.name] = record_results(
            store, model, traffic_window, {"model_traffic": traffic}, flow_run.id
        ) + record_results(store, model, quality_window, quality, flow_run.id)
        get_run_logger().info("%s: %d results for the window ending %s", model.name, stored[model.name], end)
    compact_tallies(store)
    return stored
