"""pipeline-health: latency, throughput and error rate of each configured pipeline, then the health
of each feature store (its views' freshness reads the pipelines' runs)."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from tasks.feature_stores import evaluate_feature_store
from tasks.metrics import Window
from tasks.pipelines import evaluate_pipeline
from watchkeeper.settings import Settings
from watchkeeper.store.samples import Sampling
from watchkeeper.times import utcnow


@flow(name="pipeline-health", log_prints=True)
def pipeline_health(pipelines: list[str] | None = None) -> dict[str, dict[str, float]]:
    settings = Settings()
    store = settings.open_store()
    config = settings.monitoring
    end = utcnow()
    summary = {}
    for pipeline in config.pipelines:
        if pipelines and pipeline.name not in pipelines:
            continue
        measurements = evaluate_pipeline(store, pipeline, Window(end - pipeline.window, end), flow_run.id)
        summary[pipeline.name] = {m.metric: m.value for m in measurements}
    for feature_store in config.feature_stores:
        window = Window(end - feature_store.window, end)
        measurements = evaluate_feature_store(store, feature_store, window, Sampling.of(config), flow_run.id)
        summary[feature_store.name] = {f"{m.metric}{{{m.labels_key}}}": m.value for m in measurements}
    return summary
