"""Pipeline health: latency, throughput and error rate from reported stage runs and Prefect flow runs."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from sqlalchemy import select

from tasks.metrics import Measurement, Window, save_results
from watchkeeper.config import Pipeline
from watchkeeper.intake.records import PipelineRunRecord
from watchkeeper.store import Store
from watchkeeper.store.intake import store_pipeline_runs
from watchkeeper.store.schema import PipelineRun

FINISHED = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED]


def pipeline_metrics(runs: pd.DataFrame) -> list[Measurement]:
    """Records per second of processing time, share of failed records, runs and mean stage duration."""
    if runs.empty:
        return [Measurement("runs", 0.0)]
    processing = float(runs["duration_seconds"].sum())
    records = float(runs["records"].sum())
    return [
        Measurement("runs", float(runs["run_id"].nunique())),
        Measurement("mean_stage_duration_seconds", float(runs["duration_seconds"].mean())),
        Measurement("throughput_records_per_second", records / processing if processing > 0 else 0.0),
        Measurement("error_rate", float(runs["errors"].sum()) / records if records > 0 else 0.0),
    ]


def read_runs(store: Store, pipeline: str, window: Window) -> pd.DataFrame:
    query = select(
        PipelineRun.run_id,
        PipelineRun.stage,
        PipelineRun.duration_seconds,
        PipelineRun.records,
        PipelineRun.errors,
    ).where(
        PipelineRun.pipeline_name == pipeline,
        PipelineRun.started_at >= window.start,
        PipelineRun.started_at < window.end,
    )
    with store.reading() as session:
        rows = session.execute(query).all()
    return pd.DataFrame(rows, columns=["run_id", "stage", "duration_seconds", "records", "errors"])


def prefect_run_records(pipeline: str, deployment: str, since: datetime) -> list[PipelineRunRecord]:
    """Finished runs of a Prefect deployment as pipeline runs: one record per run, failed ones as errors."""
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                start_time=FlowRunFilterStartTime(after_=since),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=FINISHED)),
            ),
        )
    return [
        PipelineRunRecord(
            pipeline_name=pipeline,
            run_id=str(run.id),
            stage="prefect",
            started_at=run.start_time,
            duration_seconds=run.total_run_time.total_seconds(),
            records=1,
            errors=0 if run.state_type == StateType.COMPLETED else 1,
        )
        for run in runs
        if run.start_time is not None
    ]


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE, task_run_name="pipeline-{pipeline.name}")
def evaluate_pipeline(
    store: Store, pipeline: Pipeline, window: Window, flow_run_id: str | None
) -> list[Measurement]:
    if pipeline.prefect_deployment:
        records = prefect_run_records(pipeline.name, pipeline.prefect_deployment, window.start)
        store_pipeline_runs(store, records, duration_buckets=lambda _name: pipeline.latency_buckets)
    measurements = pipeline_metrics(read_runs(store, pipeline.name, window))
    save_results(store, "pipeline", pipeline.name, "", window, measurements, flow_run_id)
    return measurements
