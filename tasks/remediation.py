"""Guarded remediation for incidents: decisions recorded before anything acts, actions run once.

The store holds everything a guard needs (the kill switch, the audit trail that cooldowns and the
hourly budget are computed from), so the guards hold across restarts and replicas. Every decision,
taken or not, is a row of the audit trail with its reason and inputs; its idempotency key
(incident, root-cause alert, playbook, position) makes a second run find the decision instead of
taking it again. Executing a row starts with a claim (`watchkeeper.store.remediation`): of any
number of overlapping runs, retries and replicas, only the one whose compare-and-set changed the
row calls the target.

An incident owes handling when correlation changed it (`revision`) after its decisions or reverts
were last recorded (`handled_revision`); recording them and catching up `handled_revision` is one
transaction, so a run that dies leaves the incident owed for the next run or the reconciler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tasks.incidents import lock_incidents
from tasks.playbooks import COMMUNICATION, AlertFacts, Guards, maintenance, plan, select_playbook
from watchkeeper.actions import (
    ACTIONS,
    REVERTIBLE,
    ActionContext,
    ActionRefused,
    IncidentSummary,
    tls_context,
)
from watchkeeper.config import Playbook, WatchkeeperConfig
from watchkeeper.runcontrol import uninterruptible
from watchkeeper.store import Store
from watchkeeper.store.actions import remediation_on
from watchkeeper.store.remediation import (
    CLAIMABLE,
    INITIAL,
    RESERVING,
    ActionStatus,
    Claim,
    Decision,
    RemediationAction,
    awaiting_since,
    claim,
    claim_budget,
    finish,
    mark_outcome_unknown,
    record_plan,
    settle_approval,
    skip,
    stale_claims,
    take_over,
    unclaimed,
)
from watchkeeper.store.schema import Alert, Incident, IncidentEvent
from watchkeeper.times import utcnow

log = logging.getLogger(__name__)

ACTION_RETRIES = 2
ACTION_RETRY_DELAYS = [1, 3]
REVERT_SUFFIX = "/resolved"


def load_guards(session: Session, config: WatchkeeperConfig, now: datetime) -> Guards:
    longest = max((p.cooldown for p in config.remediation.playbooks), default=timedelta(0))
    reserving = (
        RemediationAction.decision.in_([Decision.RUN, Decision.NEEDS_APPROVAL])
        & (RemediationAction.status.in_(list(RESERVING)))
        & ~RemediationAction.idempotency_key.endswith(REVERT_SUFFIX)
    )
    last_run = {
        (action, target): at
        for action, target, at in session.execute(
            select(RemediationAction.action, RemediationAction.target, func.max(RemediationAction.decided_at))
            .where(reserving, RemediationAction.decided_at >= now - longest)
            .group_by(RemediationAction.action, RemediationAction.target)
        )
    }
    runs = session.scalar(
        select(func.count())
        .select_from(RemediationAction)
        .where(
            reserving,
            RemediationAction.decided_at >= now - timedelta(hours=1),
            RemediationAction.action.not_in(list(COMMUNICATION)),
        )
    )
    return Guards(
        remediation_on(session),
        last_run,
        runs or 0,
        config.remediation.max_actions_per_hour,
        tuple(config.remediation.maintenance_windows),
    )


def alert_facts(alert: Alert, incident_id: int | None = None) -> AlertFacts:
    return AlertFacts(alert.alertname, alert.status, alert.labels, alert.severity, incident_id, alert.id)


@dataclass(frozen=True)
class ActionRow:
    id: int
    action: str
    target: str
    decision: str
    reason: str
    status: str
    inputs: dict[str, Any]
    flow_run_id: str | None = None

    @classmethod
    def of(cls, row: RemediationAction) -> ActionRow:
        return cls(
            row.id,
            row.action,
            row.target,
            row.decision,
            row.reason,
            row.status,
            dict(row.inputs),
            row.flow_run_id,
        )


@dataclass(frozen=True)
class IncidentDecisions:
    playbook: Playbook | None
    rows: list[ActionRow]
    summary: IncidentSummary
    created: bool = False

    @property
    def awaiting(self) -> list[ActionRow]:
        return [r for r in self.rows if r.status == ActionStatus.AWAITING_APPROVAL]


def summary_of(incident: Incident) -> IncidentSummary:
    return IncidentSummary(
        incident.id, incident.title, incident.severity, incident.root_cause_service, incident.status
    )


def _mark_handled(session: Session, incident: Incident, revision: int) -> None:
    session.execute(
        update(Incident)
        .where(Incident.id == incident.id, Incident.handled_revision < revision)
        .values(handled_revision=revision)
        .execution_options(synchronize_session=False)
    )


def _decide(
    session: Session, config: WatchkeeperConfig, incident: Incident, flow_run_id: str | None, now: datetime
) -> IncidentDecisions:
    summary = summary_of(incident)
    alert = session.get(Alert, incident.root_cause_alert_id) if incident.root_cause_alert_id else None
    if alert is None:
        return IncidentDecisions(None, [], summary)
    facts = alert_facts(alert, incident.id)
    playbook = select_playbook(config.remediation.playbooks, facts)
    if playbook is None:
        return IncidentDecisions(None, [], summary)
    prefix = f"incident-{incident.id}/alert-{alert.id}/{playbook.name}/"
    existing = session.scalars(
        select(RemediationAction)
        .where(
            RemediationAction.idempotency_key.startswith(prefix, autoescape=True),
            ~RemediationAction.idempotency_key.endswith(REVERT_SUFFIX),
        )
        .order_by(RemediationAction.id)
    ).all()
    if existing:
        return IncidentDecisions(playbook, [ActionRow.of(r) for r in existing], summary)
    rows = []
    for planned in plan(playbook, facts, load_guards(session, config, now), now):
        row = RemediationAction(
            idempotency_key=f"{prefix}{planned.index}",
            incident_id=incident.id,
            alert_id=alert.id,
            playbook=playbook.name,
            action=planned.action,
            target=planned.target,
            decision=planned.decision,
            reason=planned.reason,
            inputs=planned.inputs,
            status=INITIAL[planned.decision],
            flow_run_id=flow_run_id,
            decided_at=now,
            calls=[],
        )
        session.add(row)
        rows.append(row)
    session.flush()
    session.add(
        IncidentEvent(
            incident_id=incident.id,
            kind="playbook",
            detail={"playbook": playbook.name, "decisions": {r.action: r.decision for r in rows}},
        )
    )
    return IncidentDecisions(playbook, [ActionRow.of(r) for r in rows], summary, created=True)


def _record_reverts(
    session: Session, incident: Incident, flow_run_id: str | None, now: datetime
) -> IncidentDecisions:
    """On resolution: one pending follow-up per succeeded action that is undone or told of it
    (switch back from the stable model, resolve the page, comment on the ticket)."""
    done = session.scalars(
        select(RemediationAction)
        .where(
            RemediationAction.incident_id == incident.id,
            RemediationAction.status == ActionStatus.SUCCEEDED,
            RemediationAction.action.in_(list(REVERTIBLE)),
            ~RemediationAction.idempotency_key.endswith(REVERT_SUFFIX),
        )
        .order_by(RemediationAction.id)
    ).all()
    keys = [f"{row.idempotency_key}{REVERT_SUFFIX}" for row in done]
    recorded = {
        r.idempotency_key: r
        for r in session.scalars(select(RemediationAction).where(RemediationAction.idempotency_key.in_(keys)))
    }
    rows = []
    for row, key in zip(done, keys, strict=True):
        follow_up = recorded.get(key)
        if follow_up is None:
            follow_up = RemediationAction(
                idempotency_key=key,
                incident_id=incident.id,
                alert_id=row.alert_id,
                playbook=row.playbook,
                action=row.action,
                target=row.target,
                decision=Decision.RUN,
                reason="the incident resolved",
                inputs={**row.inputs, "reverting": dict(row.result or {})},
                status=ActionStatus.PENDING,
                flow_run_id=flow_run_id,
                decided_at=now,
                calls=[],
            )
            session.add(follow_up)
        rows.append(follow_up)
    session.flush()
    return IncidentDecisions(None, [ActionRow.of(r) for r in rows], summary_of(incident), created=bool(rows))


def handle_incident(
    store: Store, config: WatchkeeperConfig, incident_id: int, flow_run_id: str | None
) -> IncidentDecisions:
    """Record what the incident's current state asks for (decisions while open, follow-ups once
    resolved) and catch up its handled revision, in one transaction; idempotent."""
    now = utcnow()
    with store.writing() as session:
        lock_incidents(session)
        incident = session.get(Incident, incident_id)
        if incident.status == "open":
            decisions = _decide(session, config, incident, flow_run_id, now)
        else:
            decisions = _record_reverts(session, incident, flow_run_id, now)
        _mark_handled(session, incident, incident.revision)
        return decisions


def decide(
    store: Store, config: WatchkeeperConfig, incident_id: int, flow_run_id: str | None
) -> IncidentDecisions:
    """The decisions for an open incident's root-cause alert, recorded once."""
    return handle_incident(store, config, incident_id, flow_run_id)


def owed_incidents(store: Store) -> list[int]:
    """Incidents changed since their decisions or follow-ups were last recorded."""
    with store.reading() as session:
        return list(
            session.scalars(
                select(Incident.id).where(Incident.handled_revision < Incident.revision).order_by(Incident.id)
            )
        )


# --- executing a row ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SilenceCheck:
    """What Alertmanager says of an alert now: why to hold back, or a note that it could not say."""

    silenced: str | None = None
    note: str | None = None


def silence_check(alertmanager_url: str | None, alert: Alert | None, timeout: float) -> SilenceCheck:
    """Ask Alertmanager (`GET /api/v2/alerts`) whether the alert is now silenced or inhibited: an
    operator often silences a deploy's alerts after they were first sent."""
    if not alertmanager_url or alert is None:
        return SilenceCheck()
    name = alert.alertname.replace("\\", "\\\\").replace('"', '\\"')
    try:
        response = httpx.get(
            f"{alertmanager_url.rstrip('/')}/api/v2/alerts",
            params={"filter": f'alertname="{name}"'},
            timeout=timeout,
            verify=tls_context(),
        )
        response.raise_for_status()
        listed = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return SilenceCheck(
            note=f"Alertmanager at {alertmanager_url} could not be asked about silences "
            f"({type(exc).__name__}); acted without knowing"
        )
    for candidate in listed if isinstance(listed, list) else []:
        if candidate.get("fingerprint") != alert.fingerprint:
            continue
        status = candidate.get("status") or {}
        if status.get("silencedBy"):
            return SilenceCheck(
                silenced=f"the alert is silenced in Alertmanager ({', '.join(status['silencedBy'])})"
            )
        if status.get("inhibitedBy"):
            return SilenceCheck(
                silenced=f"the alert is inhibited in Alertmanager (by {', '.join(status['inhibitedBy'])})"
            )
    return SilenceCheck()


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
    except ActionRefused as exc:
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
                .where(Incident.id == won.incident_id, Incident.status == "resolved")
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


def rows_of(store: Store, row_ids: list[int]) -> list[ActionRow]:
    with store.reading() as session:
        query = (
            select(RemediationAction).where(RemediationAction.id.in_(row_ids)).order_by(RemediationAction.id)
        )
        return [ActionRow.of(r) for r in session.scalars(query)]


def runnable(decisions: IncidentDecisions) -> list[ActionRow]:
    return [r for r in decisions.rows if r.status in CLAIMABLE]


def report_markdown(report: dict[str, Any]) -> str:
    """The automation report as the markdown of the `automation-report` Prefect artifact."""
    rate = "-" if report["success_rate"] is None else f"{report['success_rate']:.0%}"
    kinds = sorted({kind for counts in report["by_action"].values() for kind in counts})
    lines = [
        f"# Automation, last {report['hours']} h",
        "",
        f"{report['decisions']} decisions, {report['executed']} executed, {report['succeeded']} succeeded "
        f"(success rate {rate}).",
        "",
        "| action | " + " | ".join(kinds) + " |",
        "| --- | " + " | ".join("---" for _ in kinds) + " |",
        *(
            f"| {action} | " + " | ".join(str(counts.get(k, 0)) for k in kinds) + " |"
            for action, counts in report["by_action"].items()
        ),
        "",
        "| when | incident | action | target | decision | status | reason |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {a['decided_at']} | {a['incident_id']} | {a['action']} | {a['target']} | {a['decision']} | "
            f"{a['status']} | {a['reason']} |"
            for a in report["recent"]
        ),
    ]
    return "\n".join(lines)


# --- what a dead run left ---------------------------------------------------------------------


@dataclass
class Reconciliation:
    handled: list[int] = field(default_factory=list)
    executed: dict[int, str] = field(default_factory=dict)
    resent: dict[int, str] = field(default_factory=dict)
    outcome_unknown: list[int] = field(default_factory=list)
    timed_out: list[int] = field(default_factory=list)

    @property
    def anything(self) -> bool:
        return any((self.handled, self.executed, self.resent, self.outcome_unknown, self.timed_out))

    def as_json(self) -> dict[str, Any]:
        return {
            "handled": self.handled,
            "executed": self.executed,
            "resent": self.resent,
            "outcome_unknown": self.outcome_unknown,
            "timed_out": self.timed_out,
        }


def stale_after(config: WatchkeeperConfig) -> timedelta:
    """How long a live claimant can hold a row: plan and call, each bounded by the action timeout,
    with a margin. A claim older than this belongs to a run that died."""
    return claim_budget(config.remediation.action_timeout, 1, []) + timedelta(seconds=60)


def _summary(session: Session, incident_id: int | None) -> IncidentSummary:
    incident = session.get(Incident, incident_id) if incident_id is not None else None
    return summary_of(incident) if incident else IncidentSummary(None, "remediation", None, None)


def escalate(config: WatchkeeperConfig, playbook_name: str, summary: IncidentSummary) -> str | None:
    """Tell the playbook's escalation target that approval timed out; returns the target's name."""
    playbook = next((p for p in config.remediation.playbooks if p.name == playbook_name), None)
    if playbook is None or playbook.escalate_to is None:
        return None
    context = ActionContext(config, summary, config.remediation.action_timeout.total_seconds())
    ACTIONS["notify"].execute({"target": playbook.escalate_to}, {}, context)
    return playbook.escalate_to


def time_out_approvals(
    store: Store, config: WatchkeeperConfig, row_ids: list[int], playbook_name: str, summary: IncidentSummary
) -> list[int]:
    """Time out the rows still awaiting approval; only the caller that settled them escalates."""
    playbook = next((p for p in config.remediation.playbooks if p.name == playbook_name), None)
    target = playbook.escalate_to if playbook else None
    note = "approval timed out; nothing was done" + (f"; escalated to {target}" if target else "")
    with store.writing() as session:
        settled = settle_approval(session, row_ids, ActionStatus.TIMED_OUT, note, by="timeout")
    if settled and target:
        try:
            escalate(config, playbook_name, summary)
        except Exception as exc:  # noqa: BLE001 - the timeout stands; the failed escalation is on the record
            with store.writing() as session:
                session.add(
                    IncidentEvent(
                        incident_id=summary.id,
                        kind="escalation_failed",
                        detail={"target": target, "error": f"{type(exc).__name__}: {exc}"[:500]},
                    )
                )
    return settled


def reconcile(
    store: Store,
    config: WatchkeeperConfig,
    claimant: str,
    alertmanager_url: str | None = None,
    now: datetime | None = None,
    grace: timedelta = timedelta(seconds=60),
) -> Reconciliation:
    """Finish what dead runs left: owed incidents, decided rows nobody claimed, claims whose holder
    died mid-call, approvals nobody answered. Safe beside live runs: every step is a claim."""
    now = now or utcnow()
    done = Reconciliation()
    for incident_id in owed_incidents(store):
        handle_incident(store, config, incident_id, None)
        done.handled.append(incident_id)
    with store.reading() as session:
        orphans = [(r.id, r.incident_id) for r in unclaimed(session, now - grace)]
        stale = [
            (r.id, r.incident_id, r.action, dict(r.inputs), r.claimed_by)
            for r in stale_claims(session, now - stale_after(config))
        ]
        waiting = awaiting_since(session, now - grace)
        summaries = {
            i: _summary(session, i)
            for i in {*(o[1] for o in orphans), *(s[1] for s in stale), *(w.incident_id for w in waiting)}
        }
        timeouts = {p.name: p.approval_timeout for p in config.remediation.playbooks}
        overdue: dict[tuple[str, int | None], list[int]] = {}
        for row in waiting:
            if row.decided_at + timeouts.get(row.playbook, timedelta(0)) + grace < now:
                overdue.setdefault((row.playbook, row.incident_id), []).append(row.id)
    for row_id, incident_id in orphans:
        try:
            done.executed[row_id] = str(
                execute_action(
                    store, config, row_id, summaries[incident_id], claimant, alertmanager_url
                ).outcome
            )
        except Exception as exc:  # noqa: BLE001 - recorded on the row as failed; the reconciler goes on
            done.executed[row_id] = f"failed: {type(exc).__name__}"
    context = ActionContext(
        config, IncidentSummary(None, "", None, None), config.remediation.action_timeout.total_seconds()
    )
    for row_id, incident_id, action, inputs, holder in stale:
        if ACTIONS[action].idempotent(inputs, context):
            with store.writing() as session:
                won = take_over(session, row_id, holder, claimant, now)
            if won is None:
                continue
            try:
                done.resent[row_id] = str(run_claimed(store, config, won, summaries[incident_id]).outcome)
            except Exception as exc:  # noqa: BLE001 - recorded on the row as failed
                done.resent[row_id] = f"failed: {type(exc).__name__}"
            continue
        note = (
            f"its claimant {holder} stopped before recording a result; whether {action} reached its "
            "target is unknown, and it is not re-sent because it is not idempotent: check the target"
        )
        with store.writing() as session:
            if mark_outcome_unknown(session, row_id, holder, note, now):
                done.outcome_unknown.append(row_id)
                if incident_id is not None:
                    session.add(
                        IncidentEvent(
                            incident_id=incident_id,
                            kind="action_outcome_unknown",
                            detail={"action_id": row_id, "action": action},
                        )
                    )
    for (playbook_name, incident_id), row_ids in overdue.items():
        done.timed_out += time_out_approvals(store, config, row_ids, playbook_name, summaries[incident_id])
    return done
