"""handle-alerts: started by the outbox for each Alertmanager notification that brings news.

It works on the store, not on the notification: every alert not yet correlated is correlated, and
every incident that changed since its remediation was last recorded is handled, so a run that
failed, or a notification whose run has not started yet, is covered by the next run (and by the
reconcile-remediation flow). Each open incident gets its playbook's decisions (recorded once) and
its actions run as tasks, each claimed before it calls anything; each resolved incident gets its
follow-ups (fallbacks switched back, pages resolved, tickets commented). Approvals are asked last,
one pause per incident, so that an approval nobody answers does not hold back the other incidents.
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect import flow, pause_flow_run
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from tasks.incidents import correlate_alerts
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.remediation.decisions import (
    ActionRow,
    IncidentDecisions,
    handle_incident,
    owed_incidents,
    rows_of,
    runnable,
)
from watchkeeper.remediation.execution import run_action
from watchkeeper.remediation.reconciler import time_out_approvals
from watchkeeper.remediation.report import report_markdown
from watchkeeper.runtime.control import waiting_for_people
from watchkeeper.settings import Settings
from watchkeeper.store import Store
from watchkeeper.store.actions import automation_report
from watchkeeper.store.remediation import ActionStatus, settle_approval
from watchkeeper.tracing import current_trace_id

APPROVAL_POLL_SECONDS = 1
PREFECT_UI = "prefect-ui"


class Approval(RunInput):
    """What the Prefect UI asks an operator; an approval given there is recorded as the UI's."""

    approved: bool
    comment: str = ""


def _await_approval(store: Store, config: WatchkeeperConfig, decisions: IncidentDecisions) -> list[ActionRow]:
    """Pause until the incident's actions are approved, rejected or time out; returns the approved
    rows. An approval through the service settles the rows itself and resumes this run, whose own
    compare-and-set then finds nothing left to settle."""
    waiting = [r.id for r in decisions.awaiting]
    playbook = decisions.playbook
    wanted = ", ".join(f"{r.action} on {r.target}" for r in decisions.awaiting)
    description = (
        f"Incident {decisions.summary.id}: {decisions.summary.title}. "
        f"Playbook {playbook.name!r} wants to run {wanted}."
    )
    try:
        with waiting_for_people():
            answer = pause_flow_run(
                wait_for_input=Approval.with_initial_data(description=description, approved=False),
                timeout=int(playbook.approval_timeout.total_seconds()),
                poll_interval=APPROVAL_POLL_SECONDS,
            )
    except FlowPauseTimeout:
        time_out_approvals(store, config, waiting, playbook.name, decisions.summary)
    else:
        verdict = ActionStatus.APPROVED if answer.approved else ActionStatus.REJECTED
        note = f"{verdict} in the Prefect UI" + (f": {answer.comment}" if answer.comment else "")
        with store.writing() as session:
            settle_approval(session, waiting, verdict, note, by=PREFECT_UI)
    return [r for r in rows_of(store, waiting) if r.status == ActionStatus.APPROVED]


def _run_rows(
    store: Store,
    config: WatchkeeperConfig,
    decisions: IncidentDecisions,
    rows: list[ActionRow],
    claimant: str,
    alertmanager_url: str | None,
) -> dict[int, str]:
    timeout = config.remediation.action_timeout.total_seconds() * 3
    states = {
        row.id: run_action.with_options(timeout_seconds=timeout)(
            store, quote(config), row, decisions.summary, claimant, alertmanager_url, return_state=True
        )
        for row in rows
    }
    return {row_id: state.type.value for row_id, state in states.items()}


@flow(name="handle-alerts", log_prints=True)
def handle_alerts(notification_id: int | None = None) -> dict[str, Any]:
    settings = Settings()
    store, config = settings.open_store(), settings.monitoring
    alertmanager_url = settings.alertmanager_url or config.remediation.alertmanager_url
    run_id = str(flow_run.id) if flow_run.id else None
    claimant = f"handle-alerts/{run_id or uuid.uuid4().hex}"
    # Quoted: Prefect walks a task's arguments for futures, twice a call, and the configuration of
    # fifty models took about 60 ms of CPU to walk (0.4 s a run under load, before the first action).
    outcome = correlate_alerts(store, quote(config))
    print(
        f"notification {notification_id} (trace {current_trace_id()}): {outcome.correlated} alerts "
        f"correlated; incidents opened {outcome.opened}, updated {outcome.updated}, "
        f"resolved {outcome.resolved}"
    )
    states: dict[int, str] = {}
    handled: dict[int, IncidentDecisions] = {}
    for incident_id in owed_incidents(store):
        decisions = handled[incident_id] = handle_incident(store, config, incident_id, run_id)
        states |= _run_rows(store, config, decisions, runnable(decisions), claimant, alertmanager_url)
    for decisions in handled.values():
        if decisions.created and decisions.awaiting and decisions.playbook is not None:
            approved = _await_approval(store, config, decisions)
            states |= _run_rows(store, config, decisions, approved, claimant, alertmanager_url)
    actions = {
        incident_id: [
            {
                "action": r.action,
                "target": r.target,
                "decision": r.decision,
                "state": states.get(r.id, r.status),
            }
            for r in decisions.rows
        ]
        for incident_id, decisions in handled.items()
        if decisions.playbook is not None
    }
    reverted = {
        incident_id: [{"action": r.action, "state": states.get(r.id, r.status)} for r in decisions.rows]
        for incident_id, decisions in handled.items()
        if decisions.playbook is None and decisions.rows
    }
    if states or any(d.rows for d in handled.values()):
        create_markdown_artifact(
            key="automation-report",
            markdown=report_markdown(automation_report(store)),
            description="Remediation over the last 24 hours",
        )
    return {**outcome.as_json(), "actions": actions, "reverted": reverted}
