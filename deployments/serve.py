"""Watchkeeper's flows as Prefect deployments, with schedules from the configuration.

Served by the warm executor (`watchkeeper executor`, started by `watchkeeper up`), which executes
their runs in its own process.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import Flow
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.deployments.runner import RunnerDeployment

from flows.backfill_drift import backfill_drift
from flows.collect_model_metrics import collect_model_metrics
from flows.evaluate_data_quality import evaluate_data_quality
from flows.evaluate_drift import evaluate_drift
from flows.handle_alerts import handle_alerts
from flows.model_report import model_report
from flows.pipeline_health import pipeline_health
from flows.reconcile_remediation import reconcile_remediation
from flows.retention import retention
from watchkeeper.settings import Settings

FLOWS: dict[str, Flow] = {
    f.name: f
    for f in (
        collect_model_metrics,
        evaluate_drift,
        evaluate_data_quality,
        pipeline_health,
        backfill_drift,
        handle_alerts,
        reconcile_remediation,
        retention,
        model_report,
    )
}
DEPLOYMENT_NAMES = tuple(FLOWS)
FIRST_RUN_DELAY = timedelta(seconds=30)


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    schedules = settings.monitoring.schedules
    scheduled = {
        collect_model_metrics: (
            schedules.collect_model_metrics,
            "Traffic, errors, latency, label-gated quality.",
        ),
        evaluate_drift: (
            schedules.evaluate_drift,
            "Feature and prediction drift against the reference (Evidently).",
        ),
        evaluate_data_quality: (
            schedules.evaluate_data_quality,
            "Missing values, ranges, categories, types.",
        ),
        pipeline_health: (schedules.pipeline_health, "Pipeline latency, throughput and error rate."),
        reconcile_remediation: (
            schedules.reconcile_remediation,
            "Finishes what dead handle-alerts runs left: undecided incidents, unclaimed or stuck actions.",
        ),
        retention: (schedules.retention, "Deletes stored data older than the configured retention."),
    }
    # Anchored shortly after start-up, so every evaluation runs within a minute of `watchkeeper up`
    # instead of one full interval later (15 minutes for drift).
    first_run = datetime.now(UTC) + FIRST_RUN_DELAY
    deployments = [
        flow.to_deployment(
            name=flow.name,
            schedule=IntervalSchedule(interval=interval, anchor_date=first_run),
            concurrency_limit=1,
            description=description,
            tags=["watchkeeper", "scheduled"],
        )
        for flow, (interval, description) in scheduled.items()
    ]
    reports = settings.monitoring.reports
    deployments.append(
        model_report.to_deployment(
            name=model_report.name,
            schedule=IntervalSchedule(
                interval=schedules.model_report, anchor_date=datetime.now(UTC) + reports.first_after
            ),
            concurrency_limit=1,
            description="Each model's report of the last period: quality, traffic, value, drift, incidents.",
            tags=["watchkeeper", "scheduled"],
        )
    )
    deployments.append(
        backfill_drift.to_deployment(
            name=backfill_drift.name,
            description="Ad hoc: drift of every window in a range.",
            tags=["watchkeeper", "ad-hoc"],
        )
    )
    deployments.append(
        handle_alerts.to_deployment(
            name=handle_alerts.name,
            description="Started by Alertmanager notifications: alerts into incidents, root causes.",
            tags=["watchkeeper", "alerts"],
        )
    )
    return deployments
