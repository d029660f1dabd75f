"""Remediation acts exactly once: the state machine, claims raced by real sessions, overlapping runs
against a slow target, approvals settled once, and the reconciler after a run killed mid-call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from tasks.incidents import correlate_pending_alerts
from tests.conftest import REPO
from tests.test_incidents import alert, notify
from tests.test_remediation import incident_for, remediation_config, secrets  # noqa: F401 - autouse
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.remediation.decisions import handle_incident, owed_incidents
from watchkeeper.remediation.execution import execute_action, run_claimed
from watchkeeper.remediation.reconciler import reconcile, stale_after, time_out_approvals
from watchkeeper.store import Store
from watchkeeper.store.actions import answer_approval
from watchkeeper.store.remediation import (
    ALLOWED,
    STATUS_LENGTH,
    ActionStatus,
    IllegalTransition,
    RemediationAction,
    claim,
    transition,
)
from watchkeeper.store.schema import IncidentEvent
from watchkeeper.times import utcnow


def latency_incident(store: Store, config: WatchkeeperConfig, fp: str = "lat", minutes: int = 0) -> int:
    return incident_for(
        store,
        config,
        alert("ModelInferenceLatencyHigh", timedelta(minutes=minutes), model_name="credit_approval", fp=fp),
    )


def rows(store: Store, **where: object) -> list[RemediationAction]:
    with store.reading() as session:
        query = select(RemediationAction).order_by(RemediationAction.id)
        for column, value in where.items():
            query = query.where(getattr(RemediationAction, column) == value)
        return list(session.scalars(query))


# --- the state machine ------------------------------------------------------------------------


def test_every_status_fits_its_column_and_an_unknown_one_is_refused(store: Store) -> None:
    assert len("awaiting_approval") == STATUS_LENGTH
    assert set(ALLOWED) == set(ActionStatus)
    with store.writing() as session:
        session.add(
            RemediationAction(
                idempotency_key="k",
                playbook="p",
                action="scale",
                target="t",
                decision="needs_approval",
                reason="r",
                inputs={},
                status=ActionStatus.AWAITING_APPROVAL,
            )
        )
    with pytest.raises(IntegrityError), store.writing() as session:
        session.execute(update(RemediationAction).values(status="half_done"))
    with pytest.raises(IllegalTransition), store.writing() as session:
        transition(session, 1, (ActionStatus.SUCCEEDED,), ActionStatus.RUNNING)


def test_two_sessions_claiming_one_row_exactly_one_wins(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    config = remediation_config(tmp_path, *standins)
    decisions = handle_incident(store, config, latency_incident(store, config), None)
    row_id = decisions.rows[0].id
    contenders = 8
    barrier = threading.Barrier(contenders)
    won: list[str] = []

    def contend(name: str) -> None:
        if store.is_sqlite:  # its writers take the lock at BEGIN: they can only race up to it
            barrier.wait(timeout=30)
            with store.writing() as session:
                if claim(session, row_id, name) is not None:
                    won.append(name)
            return
        with store.writing() as session:
            # Every session reads the row as pending, as a read-then-write would, before any writes.
            status = session.scalar(select(RemediationAction.status).where(RemediationAction.id == row_id))
            barrier.wait(timeout=30)
            if status == "pending" and claim(session, row_id, name) is not None:
                won.append(name)

    threads = [threading.Thread(target=contend, args=(f"run-{i}",)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(won) == 1
    [row] = rows(store, id=row_id)
    assert (row.status, row.claimed_by, row.attempts) == ("running", won[0], 1)
    assert [c["claimant"] for c in row.calls] == won


def test_overlapping_runs_on_one_incident_call_a_slow_target_once(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    """Three notifications about one failure on three versions of one model, each starting a run
    while the circuit breaker is still answering the first: one call, and the audit trail says so."""
    kube, http, smtp = standins
    config = remediation_config(tmp_path, *standins)
    http.delay["/breaker/credit_approval/open"] = 1.5
    versions = [
        alert(
            "ModelAccuracyCritical",
            timedelta(seconds=3 * i),
            model_name="credit_approval",
            severity="critical",
            fp=f"v{i}",
            model_version=f"v{i}",
        )
        for i in range(3)
    ]
    outcomes: list[str] = []

    def run(body: dict, claimant: str) -> None:
        notify(store, body)
        correlate_pending_alerts(store, config)
        for incident_id in sorted({r.incident_id for r in rows(store)} | {1}):
            decisions = handle_incident(store, config, incident_id, claimant)
            for row in decisions.rows:
                if row.status == "pending":
                    outcomes.append(
                        str(execute_action(store, config, row.id, decisions.summary, claimant).outcome)
                    )

    threads = [threading.Thread(target=run, args=(body, f"run-{i}")) for i, body in enumerate(versions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(http.to("/breaker/credit_approval/open")) == 1
    assert len(http.to("/router/activate_fallback")) == 1
    breakers = [r for r in rows(store) if r.action == "circuit_breaker"]
    ran = [r for r in breakers if r.status == "succeeded"]
    assert len(ran) == 1 and len(ran[0].calls) == 1 and ran[0].attempts == 1
    assert all(r.status in ("succeeded", "not_run") for r in breakers)


def test_an_accuracy_incident_keeps_its_playbook_when_warnings_join_later(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    config = remediation_config(tmp_path, *standins)
    first = alert("ModelAccuracyCritical", timedelta(0), model_name="credit_approval", severity="critical")
    incident_id = incident_for(store, config, first)
    notify(
        store,
        alert(
            "ModelErrorRateHigh",
            timedelta(minutes=1),
            model_name="credit_approval",
            severity="warning",
            fp="e",
        ),
        alert(
            "ModelInferenceLatencyHigh",
            timedelta(minutes=2),
            model_name="credit_approval",
            severity="warning",
            fp="l",
        ),
    )
    assert correlate_pending_alerts(store, config).updated == [incident_id]
    decisions = handle_incident(store, config, incident_id, None)
    assert decisions.playbook.name == "accuracy-critical"
    assert [r.action for r in decisions.rows][:2] == ["fallback_model", "circuit_breaker"]


# --- approvals -------------------------------------------------------------------------------


def quality_incident(store: Store, config: WatchkeeperConfig, fp: str = "dq") -> int:
    return incident_for(
        store, config, alert("DataQualityDegraded", timedelta(0), service="batch-scorer", fp=fp)
    )


def test_rows_awaiting_approval_hold_the_cooldown_and_the_budget(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    config = remediation_config(tmp_path, *standins)
    waiting = handle_incident(store, config, quality_incident(store, config), None)
    assert [r.status for r in waiting.rows] == ["awaiting_approval"]
    # The latency playbook scales the same Deployment: the approval pending holds its cooldown.
    scale = handle_incident(store, config, latency_incident(store, config, minutes=1), None).rows[0]
    assert scale.decision == "skip" and scale.reason.startswith("cooldown")


def test_an_approval_and_a_timeout_racing_settle_once_and_escalate_at_most_once(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    kube, http, smtp = standins
    config = remediation_config(tmp_path, *standins)
    incident_id = quality_incident(store, config)
    decisions = handle_incident(store, config, incident_id, None)
    ids = [r.id for r in decisions.awaiting]
    approved = answer_approval(store, incident_id, True, "go", "operator (WATCHKEEPER_OPERATOR_TOKEN)")
    assert approved.rows == ids
    assert time_out_approvals(store, config, ids, "quality", decisions.summary) == []
    assert answer_approval(store, incident_id, False, "no", "operator").rows == []
    [row] = rows(store, id=ids[0])
    assert row.status == "approved" and row.settled_by == "operator (WATCHKEEPER_OPERATOR_TOKEN)"
    assert row.reason.endswith("approved by operator (WATCHKEEPER_OPERATOR_TOKEN): go")
    # Two runs resumed by the one approval: one scale-up.
    results = [execute_action(store, config, ids[0], decisions.summary, f"run-{i}").outcome for i in range(2)]
    assert sorted(map(str, results)) == ["not claimed: succeeded", "succeeded"]
    assert kube.deployments[("ai", "credit-server")]["replicas"] == 3


# --- a run that dies ---------------------------------------------------------------------------

KILLED_RUN = """
import os, sys
from watchkeeper.remediation.execution import execute_action
from watchkeeper.remediation.decisions import handle_incident
from watchkeeper.config import load_config
from watchkeeper.store import Store

store, config = Store(sys.argv[1]), load_config(sys.argv[2])
decisions = handle_incident(store, config, int(sys.argv[3]), "doomed")
print("claiming", flush=True)
for row in decisions.rows:
    if row.action == sys.argv[4]:
        execute_action(store, config, row.id, decisions.summary, "doomed")
"""


def run_killed_mid_call(store: Store, config_file: Path, incident_id: int, action: str, wait_for) -> None:
    """A process that claims the action and is killed (-9) while its target is answering."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_RUN,
            store.url.render_as_string(hide_password=False),
            str(config_file),
            str(incident_id),
            action,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_for()
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_a_run_killed_between_claim_and_result_is_settled_by_the_reconciler(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    kube, http, smtp = standins
    config = remediation_config(tmp_path, *standins)
    config_file = tmp_path / "watchkeeper.yaml"
    arrived = threading.Event()
    http.delay["/breaker/credit_approval/open"] = 30
    http.on_request = lambda request: arrived.set() if request.path.startswith("/breaker") else None
    accuracy = incident_for(
        store,
        config,
        alert("ModelAccuracyCritical", timedelta(0), model_name="credit_approval", severity="critical"),
    )
    run_killed_mid_call(store, config_file, accuracy, "circuit_breaker", lambda: arrived.wait(60))
    [breaker] = rows(store, action="circuit_breaker")
    assert breaker.status == "running" and breaker.claimed_by == "doomed"

    # The scale-up of a latency incident, killed after its plan ("set 4") was recorded and sent.
    scaled = threading.Event()
    patch = "PATCH /apis/apps/v1/namespaces/ai/deployments/credit-server/scale"
    kube.on_request = lambda request: scaled.set() if f"{request.method} {request.path}" == patch else None
    kube.delay[patch] = 30
    latency = latency_incident(
        store, config, fp="slow", minutes=60
    )  # past the window: an incident of its own
    run_killed_mid_call(store, config_file, latency, "scale", lambda: scaled.wait(60))
    [scale] = rows(store, action="scale")
    assert scale.status == "running" and scale.plan == {
        "replicas_before": 2,
        "replicas": 4,
        "bound": "ceiling",
    }
    assert kube.deployments[("ai", "credit-server")]["replicas"] == 4
    del kube.delay[patch]

    # Before the claims are stale nothing happens; after, the honest outcome for each.
    assert reconcile(store, config, "reconciler").resent == {}
    later = utcnow() + stale_after(config) + timedelta(seconds=1)
    done = reconcile(store, config, "reconciler", now=later)
    assert done.outcome_unknown == [breaker.id]
    assert done.resent == {scale.id: "succeeded"}
    [breaker] = rows(store, id=breaker.id)
    assert breaker.status == "outcome_unknown" and "not idempotent" in breaker.reason
    assert len(http.to("/breaker/credit_approval/open")) == 1  # not re-sent
    assert kube.deployments[("ai", "credit-server")]["replicas"] == 4  # set to 4 twice: still 4
    [scale] = rows(store, id=scale.id)
    assert scale.status == "succeeded" and scale.attempts == 2 and scale.claimed_by == "reconciler"
    with store.reading() as session:
        kinds = [
            e.kind
            for e in session.scalars(select(IncidentEvent).where(IncidentEvent.incident_id == accuracy))
        ]
    assert "action_outcome_unknown" in kinds
    assert reconcile(store, config, "again", now=later).anything is False


def test_the_reconciler_decides_an_incident_a_dead_run_left_undecided_and_runs_it(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    kube, http, smtp = standins
    config = remediation_config(tmp_path, *standins)
    incident_id = latency_incident(store, config)  # correlated, then the run died: no decisions
    assert rows(store) == []
    done = reconcile(store, config, "reconciler", now=utcnow() + timedelta(minutes=5))
    assert done.handled == [incident_id]
    assert sorted(done.executed.values()) == ["succeeded"] * 4
    assert kube.deployments[("ai", "credit-server")]["replicas"] == 4
    # Resolved after a run died: the follow-ups are owed and the reconciler sends them once.
    with store.writing() as session:
        session.execute(text("UPDATE alerts SET status = 'resolved', ends_at = starts_at"))
    assert correlate_pending_alerts(store, config).resolved == [incident_id]
    again = reconcile(store, config, "reconciler", now=utcnow() + timedelta(minutes=10))
    assert again.handled == [incident_id]
    assert reconcile(store, config, "reconciler", now=utcnow() + timedelta(minutes=15)).anything is False


def test_an_action_that_succeeds_after_its_incident_resolved_is_still_switched_back(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    kube, http, smtp = standins
    config = remediation_config(tmp_path, *standins)
    body = alert("ModelAccuracyCritical", timedelta(0), model_name="credit_approval", severity="critical")
    incident_id = incident_for(store, config, body)
    decisions = handle_incident(store, config, incident_id, None)
    fallback = next(r for r in decisions.rows if r.action == "fallback_model")
    with store.writing() as session:
        slow = claim(session, fallback.id, "slow-run")  # its router call is still under way...
    with store.writing() as session:
        session.execute(text("UPDATE alerts SET status = 'resolved', ends_at = starts_at"))
    assert correlate_pending_alerts(store, config).resolved == [incident_id]
    assert handle_incident(store, config, incident_id, None).rows == []  # nothing had succeeded yet
    assert run_claimed(store, config, slow, decisions.summary).outcome == "succeeded"  # ...and lands
    assert owed_incidents(store) == [incident_id]
    follow_ups = handle_incident(store, config, incident_id, None)
    [switch_back] = [r for r in follow_ups.rows if r.action == "fallback_model"]
    assert execute_action(store, config, switch_back.id, follow_ups.summary, "run").outcome == "succeeded"
    assert [r.body["active"] for r in http.to("/router/activate_fallback")] == [True, False]
