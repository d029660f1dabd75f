"""Executing a decided row, once: a claim (`watchkeeper.store.remediation`) comes first, and of any
number of overlapping runs, retries and replicas only the one whose compare-and-set changed the row
calls the target (`remediation.actions`) and records its answer."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry.trace import Status, StatusCode
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import update
from sqlalchemy.orm import Session

from watchkeeper.config import WatchkeeperConfig
from watchkeeper.notifications.calls import CallRefused
from watchkeeper.notifications.senders import IncidentSummary
from watchkeeper.remediation.actions import ACTIONS, REVERTIBLE
from watchkeeper.remediation.actions.kind import ActionContext
from watchkeeper.remediation.alertmanager import SilenceCheck, silence_check
from watchkeeper.remediation.decisions import ActionRow
from watchkeeper.remediation.playbooks import COMMUNICATION, maintenance
from watchkeeper.runtime.control import uninterruptible
from watchkeeper.store import Store
from watchkeeper.store.actions import remediation_on
from watchkeeper.store.remediation import (
    CLAIMABLE,
    REVERT_SUFFIX,
    ActionStatus,
    Claim,
    RemediationAction,
    claim,
    finish,
    record_plan,
    skip,
)
from watchkeeper.store.schema import Alert, Incident, IncidentStatus
from watchkeeper.times import utcnow
from watchkeeper.tracing import tracer

log = logging.getLogger(__name__)

ACTION_RETRIES = 2
ACTION_RETRY_DELAYS = [1, 3]


@dataclass
class Execution:
    """What one attempt to execute a row came to, for the flow's summary."""

    row_id: int
    outcome: str
    result: dict[str, Any] = field(default_factory=dict)


def _hold_back(
    session: Session, config: WatchkeeperConfig, row: RemediationAction, alert: Alert | None, now: datetime
) -> str | None:
    """Why a claimable row must not run now, checked again at the last moment."""
    if row.action not in COMMUNICATION and not remediation_on(session):
        return "the kill switch was turned off before it ran"
    if alert is not None:
        return maintenance(tuple(config.remediation.maintenance_windows), alert.labels, now)
    return None


def _claim_row(
    store: Store,
    config: WatchkeeperConfig,
    row_id: int,
    claimant: str,
    alertmanager_url: str | None,
) -> Claim | Execution:
    timeout = config.remediation.action_timeout.total_seconds()
    with store.reading() as session:
        row = session.get(RemediationAction, row_id)
        alert = session.get(Alert, row.alert_id) if row.alert_id else None
        retry = row.status == ActionStatus.FAILED and row.claimed_by == claimant
        if row.status not in CLAIMABLE and not retry:
            return Execution(row_id, f"not claimed: {row.status}", dict(row.result or {}))
    reverting = row.idempotency_key.endswith(REVERT_SUFFIX)
    check = SilenceCheck() if reverting or retry else silence_check(alertmanager_url, alert, timeout)
    now = utcnow()
    with store.writing() as session:
        row = session.get(RemediationAction, row_id)
        reason = check.silenced or _hold_back(session, config, row, alert, now)
        if reason is not None and not retry:
            return Execution(
                row_id, ActionStatus.SKIPPED if skip(session, row_id, reason, now) else "not claimed"
            )
        won = claim(session, row_id, claimant, now, note=check.note)
    return won if won is not None else Execution(row_id, "not claimed")


def run_claimed(store: Store, config: WatchkeeperConfig, won: Claim, summary: IncidentSummary) -> Execution:
    """The claimed action, in a span of its own under the run's (its calls carry that trace on)."""
    with tracer().start_as_current_span(f"action {won.action}") as span:
        span.set_attributes(
            {"watchkeeper.action.row_id": won.row_id, "watchkeeper.incident.id": won.incident_id or 0}
        )
        done = _run_claimed(store, config, won, summary)
        span.set_attribute("watchkeeper.action.outcome", done.outcome)
        if done.outcome == ActionStatus.FAILED:
            span.set_status(Status(StatusCode.ERROR, str(done.result.get("error", ""))[:200]))
        return done


def _run_claimed(store: Store, config: WatchkeeperConfig, won: Claim, summary: IncidentSummary) -> Execution:
    context = ActionContext(config, summary, config.remediation.action_timeout.total_seconds())
    kind = ACTIONS[won.action]
    reverting = won.inputs.get("reverting")
    try:
        if reverting is not None:
            result = kind.revert(won.inputs, reverting, context)
        else:
            planned = won.plan
            if planned is None:
                planned = kind.plan(won.inputs, context)
                with store.writing() as session:
                    record_plan(session, won.row_id, won.claimant, planned)
            result = kind.execute(won.inputs, planned, context)
    except CallRefused as exc:
        _finish(store, won, ActionStatus.FAILED, {"error": str(exc)[:2000], "refused": True})
        return Execution(won.row_id, ActionStatus.FAILED, {"error": str(exc)})
    except Exception as exc:
        _finish(store, won, ActionStatus.FAILED, {"error": f"{type(exc).__name__}: {exc}"[:2000]})
        raise
    _finish(store, won, ActionStatus.SUCCEEDED, result)
    return Execution(won.row_id, ActionStatus.SUCCEEDED, result)


def _finish(store: Store, won: Claim, to: ActionStatus, result: dict[str, Any]) -> None:
    with store.writing() as session:
        if not finish(session, won.row_id, won.claimant, to, result):
            log.warning("action %s: its claim was taken over before %s could be recorded", won.row_id, to)
            return
        if to is not ActionStatus.SUCCEEDED or won.incident_id is None:
            return
        ticket_id = result.get("ticket_id") if won.action == "ticket" else None
        if ticket_id is not None:
            session.get(Incident, won.incident_id).ticket_id = ticket_id
        if won.action in REVERTIBLE and "reverting" not in won.inputs:
            # Succeeded after its incident resolved (a slow target): its follow-up is owed now.
            session.execute(
                update(Incident)
                .where(Incident.id == won.incident_id, Incident.status == IncidentStatus.RESOLVED)
                .values(revision=Incident.revision + 1)
                .execution_options(synchronize_session=False)
            )


def execute_action(
    store: Store,
    config: WatchkeeperConfig,
    row_id: int,
    summary: IncidentSummary,
    claimant: str,
    alertmanager_url: str | None = None,
) -> Execution:
    """Claim the row and, only if this call won the claim, call its target and record the result.

    A failure is recorded and raised, so that the Prefect task retries; the retry, presenting the
    same claimant, takes its own failed row back. Anyone else gets "not claimed" and does nothing.
    """
    with uninterruptible():  # a cancellation waits until the target's answer is recorded
        won = _claim_row(store, config, row_id, claimant, alertmanager_url)
        if isinstance(won, Execution):
            return won
        return run_claimed(store, config, won, summary)


@task(
    name="remediation-action",
    retries=ACTION_RETRIES,
    retry_delay_seconds=ACTION_RETRY_DELAYS,
    cache_policy=NO_CACHE,
)
def run_action(
    store: Store,
    config: WatchkeeperConfig,
    row: ActionRow,
    summary: IncidentSummary,
    claimant: str,
    alertmanager_url: str | None = None,
) -> dict[str, Any]:
    """One playbook action against its target, with retries and a timeout; executed once."""
    execution = execute_action(store, config, row.id, summary, claimant, alertmanager_url)
    return {"outcome": str(execution.outcome), **execution.result}
