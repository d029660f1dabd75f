"""model-report: each model's report for a period (by default the configured period up to the
run's scheduled time, so a retry reports the same period), kept in the store, shown as a Prefect
markdown artifact, and delivered once to each configured notification target."""

from __future__ import annotations

import re
from datetime import datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from tasks.report_delivery import build_model_report, deliver_model_report
from tasks.reporting import Period
from watchkeeper.settings import Settings
from watchkeeper.times import UtcTime, as_utc, utcnow


def period_end(scheduled: datetime | None) -> datetime:
    """The run's scheduled time (Prefect's, a pendulum time) to the minute: every attempt of one
    scheduled run reports one period."""
    return as_utc(scheduled or utcnow()).replace(second=0, microsecond=0)


def artifact_key(model_name: str) -> str:
    return "model-report-" + re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")


@flow(name="model-report", log_prints=True)
def model_report(
    model: str | None = None,
    start: UtcTime | None = None,
    end: UtcTime | None = None,
    deliver: bool = True,
    prometheus_url: str | None = None,
) -> dict[str, int]:
    """Reports of `model` (every configured model when unset) for [start, end); returns their ids.
    Each metric's expected band is read from `prometheus_url` (default WATCHKEEPER_PROMETHEUS_URL)."""
    settings = Settings()
    config = settings.monitoring
    if model is not None and config.model(model) is None:
        raise ValueError(f"model: {model!r} is not a configured model")
    end = end or period_end(flow_run.scheduled_start_time)
    start = start or end - config.reports.period
    if end <= start:
        raise ValueError(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    store = settings.open_store()
    base_url = (settings.url or config.reports.public_url or "").rstrip("/") or None
    reports = {}
    for configured in config.models:
        if model is not None and configured.name != model:
            continue
        built = build_model_report(
            store,
            config,
            configured,
            Period(start, end),
            settings.resolved_home,
            base_url,
            flow_run.id,
            prometheus_url or settings.prometheus_url,
        )
        create_markdown_artifact(
            key=artifact_key(configured.name),
            markdown=built.markdown,
            description=f"Model report of {configured.name}",
        )
        if deliver and config.reports.deliver_to:
            outcome = deliver_model_report(store, quote(config), quote(built), flow_run.id or "local")
            get_run_logger().info("%s: report %d delivered: %s", configured.name, built.report_id, outcome)
        reports[configured.name] = built.report_id
    return reports
