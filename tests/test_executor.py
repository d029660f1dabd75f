"""The warm executor against a real Prefect server (the session's harness) and both stores: runs
executed in place once each, UI retries, cancellation, lanes, and runs stranded by a dead executor."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.states import AwaitingRetry, Cancelling, Pending, Running
from prefect.utilities.engine import propose_state_sync

from tests.realstack import wait_until
from watchkeeper.config import ExecutorLanes
from watchkeeper.runtime.control import uninterruptible, waiting_for_people
from watchkeeper.runtime.executor import WarmExecutor
from watchkeeper.runtime.nudges import nudge
from watchkeeper.store import Store, executions
from watchkeeper.store.schema import Executor, FlowRunOutbox
from watchkeeper.times import utcnow

CALLS: Counter[str] = Counter()
GATES: dict[str, threading.Event] = {}
REACHED: dict[str, threading.Event] = {}


def gate(name: str) -> threading.Event:
    return GATES.setdefault(name, threading.Event())


def reached(name: str) -> threading.Event:
    return REACHED.setdefault(name, threading.Event())


@flow(name="wk-test-echo")
def echo(key: str) -> str:
    CALLS[key] += 1
    return key


@flow(name="wk-test-slow")
def slow(key: str, shielded: bool = False, wait_for_people: bool = False) -> None:
    """Counts its steps until it is cancelled; optionally first a section that must finish, or a
    wait for people that lends the lane's slot."""
    CALLS[key] += 1
    if shielded:
        with uninterruptible():
            reached(key).set()
            gate(key).wait(30)
            CALLS[f"{key}:shielded section done"] += 1
    if wait_for_people:
        with waiting_for_people():
            reached(key).set()
            gate(key).wait(30)
        return
    reached(key).set()
    for _ in range(600):
        CALLS[f"{key}:steps"] += 1
        time.sleep(0.05)


DEPLOYMENTS = {"handle-alerts": echo, "backfill-drift": slow}


@pytest.fixture
def executor(prefect_api: None, store: Store) -> Iterator[WarmExecutor]:
    started: list[WarmExecutor] = []

    def start(lanes: ExecutorLanes | None = None, **options: Any) -> WarmExecutor:
        deployments = [f.to_deployment(name=name) for name, f in DEPLOYMENTS.items()]
        timing = {"poll_seconds": 0.5, "sweep_seconds": 1, "cancel_poll_seconds": 0.25}
        warm = WarmExecutor(store, deployments, dict(DEPLOYMENTS), lanes, **(timing | options))
        warm.start()
        assert warm.ready.wait(60)
        started.append(warm)
        return warm

    yield start  # type: ignore[misc]
    for gate_event in GATES.values():
        gate_event.set()
    for warm in started:
        warm.stop(grace_seconds=30)
    with get_client(sync_client=True) as client:  # leave no unfinished run to the next test's executor
        for deployment_id in {d for warm in started for d in warm.deployment_names}:
            for run in client.read_flow_runs():
                if run.deployment_id == deployment_id and run.state and not run.state.is_final():
                    client.delete_flow_run(run.id)


def create_run(warm: WarmExecutor, deployment: str, **parameters: object) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.create_flow_run_from_deployment(warm._deployment_id(deployment), parameters=parameters)


def state_of(run_id: uuid.UUID) -> StateType:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state.type


def wait_for_state(run_id: uuid.UUID, wanted: StateType, timeout: float = 60) -> None:
    wait_until(lambda: state_of(run_id) == wanted, f"run {run_id} to be {wanted.value}", timeout=timeout)


def owe(store: Store, key: str) -> None:
    with store.writing() as session:
        session.add(
            FlowRunOutbox(
                idempotency_key=f"test-{key}",
                deployment="handle-alerts/handle-alerts",
                parameters={"key": key},
            )
        )


def test_owed_and_scheduled_runs_run_once_each_with_two_executors(executor, store: Store) -> None:  # noqa: ANN001
    first, _second = executor(), executor()
    with store.reading() as session:
        assert executions.liveness(session) == (2, 0)
    keys = [uuid.uuid4().hex for _ in range(16)]
    for key in keys[:8]:
        owe(store, key)
    runs = [create_run(first, "handle-alerts", key=key) for key in keys[8:]]
    wait_until(lambda: all(CALLS[k] >= 1 for k in keys), "every run's body", timeout=90)
    with store.reading() as session:
        rows = session.query(FlowRunOutbox).all()
    assert {r.state for r in rows} == {"dispatched"}
    with get_client(sync_client=True) as client:
        owed = [client.read_flow_run(uuid.UUID(r.flow_run_id)) for r in rows]
        for run in owed + runs:
            wait_for_state(run.id, StateType.COMPLETED)
        assert all(client.read_flow_run(r.id).run_count == 1 for r in owed + runs)
    assert [CALLS[k] for k in keys] == [1] * len(keys)

    def released() -> bool:
        with store.reading() as session:
            return executions.liveness(session) == (2, 0)

    wait_until(released, "every claim to be released")  # after the run's final state


def test_an_owed_run_starts_on_the_intakes_nudge_not_at_the_next_poll(
    executor,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    warm = executor(outbox_poll_seconds=3600, nudged_in=tmp_path)  # its first poll is behind it
    key = uuid.uuid4().hex
    owe(warm.store, key)
    assert nudge(tmp_path) == 1
    wait_until(lambda: CALLS[key] == 1, "the owed run's body")


def test_a_retry_from_the_ui_runs_again_warm(executor) -> None:  # noqa: ANN001
    warm = executor()
    key = uuid.uuid4().hex
    run = create_run(warm, "handle-alerts", key=key)
    wait_for_state(run.id, StateType.COMPLETED)
    with get_client(sync_client=True) as client:  # what the UI's Retry does
        propose_state_sync(client, AwaitingRetry(), flow_run_id=run.id, force=True)
        wait_for_state(run.id, StateType.COMPLETED)
        assert client.read_flow_run(run.id).run_count == 2
    assert CALLS[key] == 2


def test_a_cancellation_from_the_ui_stops_the_run_and_ends_it_cancelled(executor) -> None:  # noqa: ANN001
    warm = executor()
    key = uuid.uuid4().hex
    run = create_run(warm, "backfill-drift", key=key)
    assert reached(key).wait(60)
    with get_client(sync_client=True) as client:  # what the UI's Cancel does
        client.set_flow_run_state(run.id, Cancelling(), force=True)
    wait_for_state(run.id, StateType.CANCELLED)
    steps = CALLS[f"{key}:steps"]
    time.sleep(0.5)  # the loop would have made ten more steps by now
    assert CALLS[f"{key}:steps"] == steps < 600
    wait_until(lambda: run.id not in warm.executing, "the executor to let the run go")


def test_a_cancellation_waits_for_the_section_that_must_finish(executor) -> None:  # noqa: ANN001
    warm = executor()
    key = uuid.uuid4().hex
    run = create_run(warm, "backfill-drift", key=key, shielded=True)
    assert reached(key).wait(60)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Cancelling(), force=True)
    wait_until(
        lambda: warm.executing[run.id].control.cancel_requested, "the executor to see the cancellation"
    )
    assert state_of(run.id) == StateType.CANCELLING  # held until the section ends
    gate(key).set()
    wait_for_state(run.id, StateType.CANCELLED)
    assert CALLS[f"{key}:shielded section done"] == 1 and CALLS[f"{key}:steps"] == 0


def test_a_run_waiting_for_people_lends_its_slot(executor) -> None:  # noqa: ANN001
    warm = executor(ExecutorLanes(ad_hoc=1))
    waiting, after = uuid.uuid4().hex, uuid.uuid4().hex
    paused = create_run(warm, "backfill-drift", key=waiting, wait_for_people=True)
    assert reached(waiting).wait(60)
    other = create_run(warm, "backfill-drift", key=after, shielded=True)
    gate(after).set()
    assert reached(after).wait(60)  # ran although the lane's one slot belongs to the waiting run
    gate(waiting).set()
    wait_for_state(paused.id, StateType.COMPLETED)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(other.id, Cancelling(), force=True)
    wait_for_state(other.id, StateType.CANCELLED)


@pytest.mark.parametrize("left_in", [StateType.PENDING, StateType.RUNNING])
def test_a_run_stranded_by_a_dead_executor_is_handed_back_and_run(
    executor,  # noqa: ANN001
    store: Store,
    left_in: StateType,
) -> None:
    warm = executor()
    key = uuid.uuid4().hex
    with store.writing() as session:  # an executor on another host, silent for a minute
        then = utcnow() - timedelta(minutes=1)
        session.add(Executor(id="dead", host="elsewhere", pid=1, started_at=then, heartbeat_at=then))
    warm.stop()  # so that the dead executor's claim is taken before anyone polls
    run = create_run(warm, "handle-alerts", key=key)
    assert executions.take(store, str(run.id), "handle-alerts", "dead")
    with get_client(sync_client=True) as client:
        propose_state_sync(client, Pending(), flow_run_id=run.id)
        if left_in == StateType.RUNNING:
            propose_state_sync(client, Running(), flow_run_id=run.id)
    assert state_of(run.id) == left_in
    executor()
    wait_for_state(run.id, StateType.COMPLETED)
    assert CALLS[key] == 1
    with get_client(sync_client=True) as client:
        names = [s.name for s in client.read_flow_run_states(run.id)]
    handed_back = ["Scheduled"] if left_in == StateType.PENDING else ["Crashed", "AwaitingRetry"]
    assert names[-3 - len(handed_back) : -3] == handed_back  # then Pending, Running, Completed


@flow(name="wk-test-scheduled")
def scheduled() -> None:
    CALLS["scheduled"] += 1


def test_an_executor_that_starts_keeps_the_schedule_a_running_one_registered(
    prefect_api: None, store: Store
) -> None:
    """Each executor builds its deployments anchored at its own start; registering them again would
    delete the future runs and move the grid. A second executor (a replica, a restart) keeps the
    schedule as it is; a changed interval is registered anew."""

    def started(interval: timedelta, anchored_in: timedelta, description: str = "one") -> WarmExecutor:
        schedule = IntervalSchedule(interval=interval, anchor_date=datetime.now(UTC) + anchored_in)
        deployment = scheduled.to_deployment(
            name="wk-test-scheduled", schedule=schedule, description=description
        )
        warm = WarmExecutor(store, [deployment], {"wk-test-scheduled": scheduled}, poll_seconds=0.5)
        warm.start()
        assert warm.ready.wait(60)
        return warm

    def registered(warm: WarmExecutor) -> tuple[uuid.UUID, float, datetime]:
        [deployment_id] = warm.deployment_names
        with get_client(sync_client=True) as client:
            [schedule] = client.read_deployment(deployment_id).schedules
        return deployment_id, schedule.schedule.interval.total_seconds(), schedule.schedule.anchor_date

    first = started(timedelta(hours=1), timedelta(hours=2))
    kept, second, third, fourth = registered(first), None, None, None
    try:
        second = started(timedelta(hours=1), timedelta(hours=3))
        assert registered(second) == kept
        third = started(timedelta(hours=2), timedelta(hours=3))
        deployment_id, interval, anchor = registered(third)
        assert deployment_id == kept[0] and interval == 7200
        assert anchor - kept[2] >= timedelta(minutes=59)  # a changed schedule is applied
        fourth = started(timedelta(hours=2), timedelta(hours=5), description="a new release")
        assert registered(fourth)[2] - anchor >= timedelta(hours=1, minutes=59)  # so is a new release
    finally:
        for warm in (first, second, third, fourth):
            if warm is not None:
                warm.stop()
