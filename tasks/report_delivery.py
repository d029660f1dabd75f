"""The model report's tasks: build and keep it, then deliver it once to each configured target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.anomaly_bands import expected_bands
from tasks.evidently_workspace import project_id
from tasks.references import model_reference
from tasks.report_render import html_report, markdown, slack_text, title
from tasks.reporting import Period, gather_report
from watchkeeper.config import Model, WatchkeeperConfig
from watchkeeper.notifications.calls import CallRefused
from watchkeeper.notifications.senders import send_report
from watchkeeper.store import Store
from watchkeeper.store.reports import (
    DeliveryStatus,
    ReportPeriod,
    claim_delivery,
    record_delivery,
    save_report,
)

SEND_TIMEOUT_SECONDS = 20.0


class DeliveryFailed(RuntimeError):
    """Some target did not take the report; the task's retry claims those again."""


@dataclass(frozen=True)
class BuiltReport:
    report_id: int
    period: ReportPeriod
    summary: dict[str, Any]
    markdown: str
    html: str
    link: str | None


def produce_report(
    store: Store,
    config: WatchkeeperConfig,
    model: Model,
    period: Period,
    home: Path,
    base_url: str | None,
    flow_run_id: str | None,
    prometheus_url: str | None = None,
) -> BuiltReport:
    """Gather, render and keep the model's report for `period` (replacing an earlier one), with its
    metrics beside their expected bands as `prometheus_url` recorded them."""
    reference = model_reference(store, config, model)
    summary = gather_report(
        store,
        config,
        model,
        period,
        reference.calibration if reference else None,
        reference.segment_values if reference else {},
        project_id(home / "evidently", model.name),
    )
    summary["bands"] = expected_bands(prometheus_url, config, model, period.start, period.end)
    text = markdown(summary, base_url)
    page = html_report(summary, base_url)
    key = ReportPeriod(model.name, period.start, period.end)
    report_id = save_report(store, key, summary, text, page, flow_run_id)
    link = f"{base_url}/v1/reports/{report_id}" if base_url else None
    return BuiltReport(report_id, key, summary, text, page, link)


build_model_report = task(
    produce_report,
    retries=2,
    retry_delay_seconds=5,
    cache_policy=NO_CACHE,
    task_run_name="report-{model.name}",
)


def deliver(store: Store, config: WatchkeeperConfig, built: BuiltReport, claimant: str) -> dict[str, str]:
    """Send the report to each of `reports.deliver_to` that this caller wins the claim of; returns
    each target's outcome. Raises DeliveryFailed when a send failed (after recording it), so a
    retry claims that target again; a target already claimed elsewhere is left alone."""
    outcomes: dict[str, str] = {}
    targets = {t.name: t for t in config.notifications}
    text = slack_text(built.summary, built.link)
    filename = f"{built.period.model_name}-{built.period.end.strftime('%Y%m%dT%H%MZ')}.html"
    for name in config.reports.deliver_to:
        if not claim_delivery(store, built.period, name, claimant):
            outcomes[name] = "already claimed"
            continue
        try:
            result = send_report(
                targets[name], title(built.summary), text, built.html, filename, SEND_TIMEOUT_SECONDS
            )
        except CallRefused as exc:
            record_delivery(store, built.period, name, claimant, DeliveryStatus.FAILED, str(exc))
            outcomes[name] = f"refused: {exc}"
        except Exception as exc:  # noqa: BLE001 - recorded, then raised below for a retry
            record_delivery(
                store, built.period, name, claimant, DeliveryStatus.FAILED, f"{type(exc).__name__}: {exc}"
            )
            outcomes[name] = f"failed: {type(exc).__name__}: {exc}"
        else:
            record_delivery(store, built.period, name, claimant, DeliveryStatus.SENT, str(result))
            outcomes[name] = "sent"
    failed = {n: o for n, o in outcomes.items() if o.startswith("failed")}
    if failed:
        raise DeliveryFailed(f"report {built.report_id} not delivered to {', '.join(failed)}: {failed}")
    return outcomes


@task(retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def deliver_model_report(
    store: Store, config: WatchkeeperConfig, built: BuiltReport, claimant: str
) -> dict[str, str]:
    return deliver(store, config, built, claimant)
