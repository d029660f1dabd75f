"""pipeline-health: latency, throughput and error rate of each configured pipeline."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from tasks.metrics import Window
from tasks.pipelines import evaluate_pipeline
from watchkeeper.settings import Settings
from watchkeeper.times import utcnow


@flow(name="pipeline-health", log_prints=True)
def pipeline_health(pipelines: list[str] | None = None) -> dict[str, dict[str, float]]:
    settings = Settings()
    store = settings.open_store()
    end = utcnow()
    summary = {}
    for pipeline in settings.monitoring.pipelines:
        if pipelines and pipeline.name not in pipelines:
            continue
        measurements = evaluate_pipeline(store, pipeline, Window(end - pipeline.window, end), flow_run.id)
        summary[pipeline.name] = {m.metric: m.value for m in measurements}
    return summary
