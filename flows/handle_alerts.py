"""handle-alerts: started by the outbox for each Alertmanager notification that brings news.

It works on the store, not on the notification: every alert not yet correlated is correlated, so
a run that failed, or a notification whose run has not started yet, is covered by the next run.
Then each incident that changed gets its playbook's decisions (recorded first, once), waits for an
operator's approval where the playbook asks for one, and runs its actions as tasks; each incident
that resolved has its fallbacks switched back, its pages resolved and its ticket commented.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, pause_flow_run
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput
from prefect.runtime import flow_run

from tasks.incidents import correlate_alerts
from tasks.remediation import IncidentDecisions, decide, report_markdown, revert, run_action, settle
from watchkeeper.actions import ActionContext, notify
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.settings import Settings
from watchkeeper.store import Store
from watchkeeper.store.actions import automation_report

APPROVAL_POLL_SECONDS = 1


class Approval(RunInput):
    approved: bool
    operator: str = "prefect-ui"
    comment: str = ""


def _await_approval(store: Store, config: WatchkeeperConfig, decisions: IncidentDecisions) -> bool:
    waiting = [r.id for r in decisions.rows if r.status == "awaiting_approval"]
    if not waiting:
        return True
    playbook = decisions.playbook
    wanted = ", ".join(f"{r.action} on {r.target}" for r in decisions.rows if r.status == "awaiting_approval")
    description = (
        f"Incident {decisions.summary.id}: {decisions.summary.title}. "
        f"Playbook {playbook.name!r} wants to run {wanted}."
    )
    try:
        answer = pause_flow_run(
            wait_for_input=Approval.with_initial_data(description=description, approved=False),
            timeout=int(playbook.approval_timeout.total_seconds()),
            poll_interval=APPROVAL_POLL_SECONDS,
        )
    except FlowPauseTimeout:
        note = "approval timed out; nothing was done"
        if playbook.escalate_to:
            context = ActionContext(
                config, decisions.summary, config.remediation.action_timeout.total_seconds()
            )
            notify({"target": playbook.escalate_to}, context)
            note += f"; escalated to {playbook.escalate_to}"
        settle(store, waiting, "timed_out", note)
        return False
    verdict = "approved" if answer.approved else "rejected"
    settle(
        store,
        waiting,
        verdict,
        f"{verdict} by {answer.operator}" + (f": {answer.comment}" if answer.comment else ""),
    )
    return answer.approved


@flow(name="handle-alerts", log_prints=True)
def handle_alerts(notification_id: int | None = None) -> dict[str, Any]:
    settings = Settings()
    store, config = settings.open_store(), settings.monitoring
    outcome = correlate_alerts(store, config)
    print(
        f"notification {notification_id}: {outcome.correlated} alerts correlated; incidents opened "
        f"{outcome.opened}, updated {outcome.updated}, resolved {outcome.resolved}"
    )
    actions: dict[int, list[dict[str, Any]]] = {}
    for incident_id in sorted({*outcome.opened, *outcome.updated, *outcome.reopened}):
        decisions = decide(store, config, incident_id, str(flow_run.id) if flow_run.id else None)
        if decisions.playbook is None:
            continue
        approved = _await_approval(store, config, decisions)
        runnable = [
            r
            for r in decisions.rows
            if r.status in ("pending", "approved", "running")
            or (approved and r.status == "awaiting_approval")
        ]
        timeout = config.remediation.action_timeout.total_seconds() * 3
        states = {
            row.id: run_action.with_options(timeout_seconds=timeout)(
                store, config, row, decisions.summary, return_state=True
            )
            for row in runnable
        }
        actions[incident_id] = [
            {
                "action": r.action,
                "target": r.target,
                "decision": r.decision,
                "state": states[r.id].type.value if r.id in states else r.status,
            }
            for r in decisions.rows
        ]
    reverted = {incident_id: revert(store, config, incident_id) for incident_id in outcome.resolved}
    if actions or any(reverted.values()):
        create_markdown_artifact(
            key="automation-report",
            markdown=report_markdown(automation_report(store)),
            description="Remediation over the last 24 hours",
        )
    return {**outcome.as_json(), "actions": actions, "reverted": reverted}
