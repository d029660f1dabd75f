"""Warm executors and the flow runs they hold: the one owner of `executors` and `executor_claims`.

Prefect refuses a second `Pending` for a run, so two executors never both start it; what Prefect
cannot tell is whether the executor that started a run is still alive. Each executor heartbeats
here, and takes a claim on a run *before* proposing `Pending`, so a run in `Pending` or `Running`
whose claim is not held by a live executor was stranded. Taking a claim is the compare-and-set for
everything done to a run: executing it, or handing it back after its executor died.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from watchkeeper.store import Store, insert_for
from watchkeeper.store.schema import Executor, ExecutorClaim
from watchkeeper.times import utcnow

# An executor heartbeats every HEARTBEAT; one silent for LAPSE is taken for dead.
HEARTBEAT = timedelta(seconds=5)
LAPSE = timedelta(seconds=30)


def _live_ids(since: datetime):  # noqa: ANN202 - a SQL subquery
    return select(Executor.id).where(Executor.heartbeat_at >= since)


def register(store: Store, executor_id: str, host: str, pid: int) -> list[str]:
    """Record this executor alive; forget executors that ran on this host under a PID that no longer
    runs (a restart after kill -9 need not wait LAPSE for its predecessor's runs). Returns those."""
    now = utcnow()
    with store.writing() as session:
        same_host = session.execute(select(Executor.id, Executor.pid).where(Executor.host == host)).all()
        gone = [row.id for row in same_host if row.id != executor_id and not _pid_runs(row.pid)]
        if gone:
            session.execute(delete(Executor).where(Executor.id.in_(gone)))
        session.add(Executor(id=executor_id, host=host, pid=pid, started_at=now, heartbeat_at=now))
    return gone


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def beat(store: Store, executor_id: str) -> None:
    with store.writing() as session:
        session.execute(update(Executor).where(Executor.id == executor_id).values(heartbeat_at=utcnow()))


def retire(store: Store, executor_id: str) -> None:
    """A clean stop: the executor's remaining claims are at once another's to hand back."""
    with store.writing() as session:
        session.execute(delete(Executor).where(Executor.id == executor_id))


def take(store: Store, flow_run_id: str, deployment: str, executor_id: str) -> bool:
    """Claim the run for `executor_id`: a new claim, its own, or one whose holder is no longer alive.
    (The executor itself never executes a run twice at once: it keeps the runs it executes.)"""
    now = utcnow()
    with store.writing() as session:
        inserted = session.execute(
            insert_for(session)(ExecutorClaim)
            .values(flow_run_id=flow_run_id, executor_id=executor_id, deployment=deployment, claimed_at=now)
            .on_conflict_do_nothing(index_elements=["flow_run_id"])
        )
        if inserted.rowcount == 1:
            return True
        taken_over = session.execute(
            update(ExecutorClaim)
            .where(
                ExecutorClaim.flow_run_id == flow_run_id,
                (ExecutorClaim.executor_id == executor_id)
                | ExecutorClaim.executor_id.not_in(_live_ids(now - LAPSE)),
            )
            .values(executor_id=executor_id, claimed_at=now)
            .execution_options(synchronize_session=False)
        )
        return taken_over.rowcount == 1


def release(store: Store, flow_run_id: str, executor_id: str) -> None:
    with store.writing() as session:
        session.execute(
            delete(ExecutorClaim).where(
                ExecutorClaim.flow_run_id == flow_run_id, ExecutorClaim.executor_id == executor_id
            )
        )


def held_by_the_living(store: Store, flow_run_ids: list[str]) -> set[str]:
    """Which of these runs a live executor holds."""
    if not flow_run_ids:
        return set()
    with store.reading() as session:
        return set(
            session.scalars(
                select(ExecutorClaim.flow_run_id).where(
                    ExecutorClaim.flow_run_id.in_(flow_run_ids),
                    ExecutorClaim.executor_id.in_(_live_ids(utcnow() - LAPSE)),
                )
            )
        )


def liveness(session: Session) -> tuple[int, int]:
    """(live executors, runs they hold): what `/metrics` exports."""
    since = utcnow() - LAPSE
    live = session.scalar(select(func.count()).select_from(Executor).where(Executor.heartbeat_at >= since))
    held = session.scalar(
        select(func.count()).select_from(ExecutorClaim).where(ExecutorClaim.executor_id.in_(_live_ids(since)))
    )
    return live or 0, held or 0
