"""The warm executor: one long-lived process that has imported the flows and executes their
deployment runs in place, under Prefect's own state machine.

A process-started run pays 4-7 s (a new interpreter importing Prefect, scikit-learn and
Watchkeeper) before its first line; here a run's body starts about 0.2 s after the run is created.
The executor

- registers the deployments (with their schedules) and serves them: it polls Prefect for their
  `Scheduled` runs, which covers the schedules, Quick Runs and retries from the UI;
- starts the runs the intake owes (the outbox; `watchkeeper.runtime.dispatcher`) with their idempotency
  keys, and executes each at once: it polls the outbox, and the intake nudges it on the same host
  (`watchkeeper.runtime.nudges`);
- takes each run by a claim in the store and then by proposing `Pending` (Prefect refuses a second
  `Pending`, so two executors never both run it), and calls `prefect.flow_engine.run_flow` in a
  thread of the run's lane;
- watches its runs for `Cancelling` (a cancellation from the UI) and stops them
  (`watchkeeper.runtime.control`), ending them `Cancelled`;
- heartbeats, and hands back the runs of executors that stopped heartbeating: a run never started
  goes back to `Scheduled`; one left `Running` is marked `Crashed` and scheduled again (every
  Watchkeeper flow is idempotent: claims and compare-and-set make a second run harmless), at most
  `MAX_RUNS` times.

It runs in a process of its own, never in the web service's, so a flow cannot take the intake down.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import certifi
import httpx
import prefect.context
from opentelemetry.trace import SpanKind
from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterId,
    FlowRunFilterNextScheduledStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import SyncClientContext
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import Abort, ObjectNotFound
from prefect.flow_engine import run_flow
from prefect.settings import (
    PREFECT_API_SSL_CERT_FILE,
    PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
)
from prefect.states import AwaitingRetry, Cancelled, Crashed, Pending, Scheduled
from prefect.telemetry.run_telemetry import LABELS_TRACEPARENT_KEY
from prefect.utilities.engine import propose_state_sync

from watchkeeper.config import ExecutorLanes
from watchkeeper.runtime.control import RunCancelled, RunControl, controlled
from watchkeeper.runtime.dispatcher import OutboxDispatcher, OwedRun
from watchkeeper.runtime.nudges import NudgeListener
from watchkeeper.store import Store, executions
from watchkeeper.tracing import context_of, current_traceparent, tracer

log = logging.getLogger(__name__)

# Every other deployment runs in "scheduled". Reports read a day of predictions: they wait with the
# backfills rather than hold a slot the 15-second collection needs.
LANE_OF = {"handle-alerts": "alerts", "backfill-drift": "ad_hoc", "model-report": "ad_hoc"}
APPLY_RETRY_SECONDS = 2.0
SLOW_DUTY_SECONDS = 0.5
ANNOUNCE_SECONDS = 20.0  # Prefect shows a deployment "Not Ready" when nobody polled it for 60 s
MAX_RUNS = 3  # a run found stranded after its third start stays Crashed: it may be what kills executors
UNFINISHED_BY_ENGINE = {StateType.PENDING, StateType.RUNNING, StateType.CANCELLING}
STRANDED_STATES = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED]


class QuickRetryTransport(httpx.HTTPTransport):
    """Prefect on SQLite answers 503 when a write collides with another ("database is locked");
    its client then waits 2 s before trying again. The next attempt nearly always gets through at
    once, so the executor's clients try again after 50, 100, 200... ms instead."""

    ATTEMPTS = 6

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(self.ATTEMPTS - 1):
            response = super().handle_request(request)
            if response.status_code != 503:
                return response
            response.close()
            time.sleep(0.05 * 2**attempt)
        return super().handle_request(request)


@functools.cache
def _prefect_tls() -> ssl.SSLContext:
    """The TLS context Prefect's client would build for every client, built once."""
    if PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value():
        return httpx.create_ssl_context(verify=False)
    return ssl.create_default_context(cafile=PREFECT_API_SSL_CERT_FILE.value() or certifi.where())


def prefect_client_context() -> SyncClientContext:
    """A Prefect client for this thread, which the flow engine and tasks also use (they take the
    context's client), retrying a 503 quickly."""
    tls = _prefect_tls()
    transport = QuickRetryTransport(retries=3, verify=tls)
    return SyncClientContext(httpx_settings={"transport": transport, "verify": tls})


class Lane:
    """`slots` runs executing at once, and at most `max_waiting` more paused for people."""

    def __init__(self, slots: int, max_waiting: int) -> None:
        self._slots = threading.Semaphore(slots)
        self._threads = threading.BoundedSemaphore(slots + max_waiting)

    def try_enter(self) -> bool:
        if not self._threads.acquire(blocking=False):
            return False
        if not self._slots.acquire(blocking=False):
            self._threads.release()
            return False
        return True

    def leave(self) -> None:
        self._slots.release()
        self._threads.release()

    def lend(self) -> None:
        self._slots.release()

    def take_back(self) -> None:
        self._slots.acquire()


@dataclass
class Every:
    """A periodic duty of the executor's loop."""

    seconds: float
    duty: Callable[[], Any]
    due: float = 0.0

    def run_if_due(self, now: float) -> None:
        if now < self.due:
            return
        self.due = now + self.seconds
        name = getattr(self.duty, "__name__", "duty")
        try:
            self.duty()
        except Exception:  # noqa: BLE001 - Prefect or the store may be briefly down; try next time
            log.exception("executor duty %s failed; retrying", name)
        took = time.monotonic() - now
        if took > SLOW_DUTY_SECONDS:
            log.info("executor duty %s took %.2f s", name, took)


@dataclass
class Executing:
    run: FlowRun
    deployment: str
    control: RunControl | None = None
    thread: threading.Thread | None = None


class WarmExecutor:
    def __init__(
        self,
        store: Store,
        deployments: list[RunnerDeployment],
        flows: dict[str, Flow],
        lanes: ExecutorLanes | None = None,
        *,
        poll_seconds: float = 5.0,
        outbox_poll_seconds: float = 0.1,
        cancel_poll_seconds: float = 1.0,
        sweep_seconds: float = 10.0,
        max_backoff: timedelta = timedelta(seconds=30),
        nudged_in: Path | None = None,
    ) -> None:
        lanes = lanes or ExecutorLanes()
        self.store = store
        self.deployments = deployments
        self.flows = flows
        self.id = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lanes = {
            name: Lane(getattr(lanes, name), lanes.max_waiting) for name in ("alerts", "scheduled", "ad_hoc")
        }
        self.dispatcher = OutboxDispatcher(store, self._start_owed, max_backoff=max_backoff)
        self.deployment_names: dict[UUID, str] = {}
        self.poll_seconds = poll_seconds
        self.upcoming: dict[UUID, FlowRun] = {}
        self.executing: dict[UUID, Executing] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._client: SyncPrefectClient | None = None
        self.nudged_in = nudged_in
        self._nudges: NudgeListener | None = None
        self._dispatch = Every(outbox_poll_seconds, self.dispatcher.dispatch_due)
        self._duties = [  # in this order on the first pass: what a dead executor left goes back first
            Every(sweep_seconds, self.sweep),
            self._dispatch,
            Every(poll_seconds, self.poll_scheduled),
            Every(outbox_poll_seconds, self.start_due),
            Every(ANNOUNCE_SECONDS, self.announce),
            Every(cancel_poll_seconds, self.watch_cancellations),
            Every(executions.HEARTBEAT.total_seconds(), lambda: executions.beat(store, self.id)),
        ]
        self.ready = threading.Event()

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        # Prefect's own heartbeat thread would hold each run up to a second at its end; the
        # executor's heartbeat in the store is what tells a live run from a stranded one. Built once:
        # copying Prefect's settings costs ~10 ms of CPU, and there is a run every few seconds.
        current = prefect.context.get_settings_context()
        self._run_settings = prefect.context.SettingsContext(
            profile=current.profile,
            settings=current.settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        )
        gone = executions.register(self.store, self.id, socket.gethostname()[:255], os.getpid())
        if gone:
            log.info("executors no longer running on this host: %s", ", ".join(gone))
        context = contextvars.copy_context()
        self._loop_thread = threading.Thread(
            target=context.run, args=(self._loop,), name="executor", daemon=True
        )
        self._loop_thread.start()

    def stop(self, grace_seconds: float = 8.0) -> None:
        """Take no new run, let the running ones finish for `grace_seconds`, then retire: what is
        still running is handed back by the next executor's sweep. Bounded, so that a stack's stop
        (15 s before SIGKILL) finds the process gone."""
        self._stop.set()
        deadline = time.monotonic() + grace_seconds
        threads = [self._loop_thread] + [e.thread for e in list(self.executing.values())]
        for thread in threads:
            if thread is not None:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        try:
            executions.retire(self.store, self.id)
        except Exception:  # noqa: BLE001 - unretired, it is taken for dead once its heartbeat lapses
            log.exception("could not retire executor %s", self.id)

    def _loop(self) -> None:
        self._nudges = NudgeListener.open(self.nudged_in) if self.nudged_in is not None else None
        try:
            self._serve_until_stopped()
        finally:
            if self._nudges is not None:
                self._nudges.close()

    def _serve_until_stopped(self) -> None:
        while not self._stop.is_set():
            try:
                with prefect_client_context() as context:
                    self._client = context.client
                    self._serve()
                return
            except Exception as exc:  # noqa: BLE001 - the API is down: the owed runs wait in the outbox
                log.warning("cannot register the deployments yet, the Prefect API failed (%s); retrying", exc)
                self._stop.wait(APPLY_RETRY_SECONDS)

    def _serve(self) -> None:
        while not self._stop.is_set() and not self._apply_deployments():
            self._stop.wait(APPLY_RETRY_SECONDS)
        while not self._stop.is_set():
            now = time.monotonic()
            for duty in self._duties:
                duty.run_if_due(now)
            self.ready.set()
            self._pause(min(d.due for d in self._duties) - time.monotonic())

    def _pause(self, seconds: float) -> None:
        """Until the next duty is due, or until a nudge says the outbox owes a run: its dispatch is
        then due at once (`runtime/nudges.py`)."""
        if self._nudges is None:
            self._stop.wait(seconds)
        elif self._nudges.wait(seconds):
            self._dispatch.due = 0.0

    def _apply_deployments(self) -> bool:
        """Register the deployments; False while the Prefect API does not answer (the owed runs
        wait in the outbox meanwhile).

        One already registered with the same schedules is kept as it is: registering again deletes
        its future runs and anchors its schedule anew, so each executor that started (a replica, a
        restart) would drop a slot and shift the grid (a daily report could never come due)."""
        try:
            for deployment in self.deployments:
                kept = self._registered_alike(deployment)
                deployment_id = kept if kept is not None else UUID(str(deployment.apply()))
                self.deployment_names[deployment_id] = deployment.name
        except Exception as exc:  # noqa: BLE001 - any failure of the API means: try again shortly
            log.warning("cannot register the deployments yet (%s); retrying", exc)
            return False
        return True

    def _registered_alike(self, deployment: RunnerDeployment) -> UUID | None:
        """The id of the registered deployment of that name when it is this one but for its
        schedules' anchors (same intervals, entry point, parameters and their schema, description,
        tags), else None: a new release or configuration is registered."""
        try:
            found = self.client.read_deployment_by_name(f"{deployment.flow_name}/{deployment.name}")
        except ObjectNotFound:
            return None
        schema = deployment._parameter_openapi_schema.model_dump()  # noqa: SLF001 - what apply() sends
        wanted = (
            [getattr(s.schedule, "interval", None) for s in deployment.schedules or []],
            deployment.entrypoint,
            deployment.parameters,
            schema.get("properties"),
            deployment.description,
            sorted(deployment.tags),
        )
        registered = (
            [getattr(s.schedule, "interval", None) for s in found.schedules or []],
            found.entrypoint,
            found.parameters,
            (found.parameter_openapi_schema or {}).get("properties"),
            found.description,
            sorted(found.tags),
        )
        return found.id if wanted == registered else None

    @property
    def client(self) -> SyncPrefectClient:
        if self._client is None:
            raise RuntimeError("the executor's loop has not started")
        return self._client

    # --- taking runs --------------------------------------------------------------------------

    def _start_owed(self, owed: OwedRun) -> str:
        """The outbox's start: create the run with the intake's idempotency key (Prefect answers
        with the run it already has for a key it knows), then execute it here and now."""
        deployment_id = self._deployment_id(owed.deployment)
        with tracer().start_as_current_span(
            f"start {owed.deployment}", context=context_of(owed.traceparent), kind=SpanKind.PRODUCER
        ) as span:
            span.set_attribute("watchkeeper.outbox.idempotency_key", owed.idempotency_key)
            # Prefect's engine starts the run's span as a child of this one (its telemetry reads
            # the label), and the run's tasks and actions follow under it.
            traceparent = current_traceparent()
            labels = {LABELS_TRACEPARENT_KEY: traceparent} if traceparent else None
            run = self.client.create_flow_run_from_deployment(
                deployment_id, parameters=owed.parameters, idempotency_key=owed.idempotency_key, labels=labels
            )
            span.set_attribute("prefect.run.id", str(run.id))
            # Its thread starts in this context: without Prefect's run spans (see run_executor), the
            # run's own spans and the incident's trace id still continue this trace.
            self.try_execute(run)
        return str(run.id)

    def _deployment_id(self, qualified: str) -> UUID:
        name = qualified.split("/")[-1]
        for deployment_id, known in self.deployment_names.items():
            if known == name:
                return deployment_id
        raise LookupError(f"no deployment {qualified!r} is served by this executor")

    def poll_scheduled(self) -> None:
        """Learn the runs due before the next poll (schedules, Quick Runs, retries from the UI);
        `start_due` starts each at its time. A read: the write that marks the deployments as polled
        is `announce`'s, less often."""
        horizon = datetime.now(UTC) + timedelta(seconds=self.poll_seconds)
        runs = self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=list(self.deployment_names)),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(before_=horizon),
            ),
            sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
        )
        self.upcoming = {run.id: run for run in runs}

    def start_due(self) -> None:
        now = datetime.now(UTC)
        for run in list(self.upcoming.values()):
            start = run.next_scheduled_start_time
            if start is None or start <= now:
                del self.upcoming[run.id]
                self.try_execute(run)

    def announce(self) -> None:
        """Poll as a runner does, so that the UI shows the deployments as ready."""
        runs = self.client.get_scheduled_flow_runs_for_deployments(
            list(self.deployment_names), scheduled_before=datetime.now(UTC)
        )
        for run in runs:
            self.try_execute(run)

    def try_execute(self, run: FlowRun) -> bool:
        """Claim `run` and execute it in a thread of its lane; False when it is not ours to run now
        (running elsewhere or here already, not `Scheduled`, or its lane full: it stays `Scheduled`)."""
        deployment = self.deployment_names.get(run.deployment_id) if run.deployment_id else None
        if deployment is None or run.state is None or run.state.type != StateType.SCHEDULED:
            return False
        lane = self.lanes[LANE_OF.get(deployment, "scheduled")]
        with self._lock:
            if run.id in self.executing or self._stop.is_set() or not lane.try_enter():
                return False
            self.executing[run.id] = Executing(run, deployment)
        claimed = False
        try:
            claimed = executions.take(self.store, str(run.id), deployment, self.id) and self._propose_pending(
                run
            )
        finally:
            if not claimed:
                self._forget(run.id, lane)
        if not claimed:
            executions.release(self.store, str(run.id), self.id)
            return False
        self._spawn(self.executing[run.id], lane)
        return True

    def _propose_pending(self, run: FlowRun) -> bool:
        try:
            state = propose_state_sync(self.client, Pending(), flow_run_id=run.id)
        except Abort:
            return False
        run.state = state
        return state.is_pending()

    def _spawn(self, executing: Executing, lane: Lane) -> None:
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run,
            args=(self._execute, executing, lane),
            name=f"run-{executing.deployment}-{executing.run.name}",
            daemon=True,
        )
        executing.thread = thread
        thread.start()

    def _forget(self, run_id: UUID, lane: Lane) -> None:
        with self._lock:
            self.executing.pop(run_id, None)
        lane.leave()

    # --- executing ----------------------------------------------------------------------------

    def _execute(self, executing: Executing, lane: Lane) -> None:
        run = executing.run
        control = RunControl(threading.get_ident(), lend_slot=lane.lend, take_slot_back=lane.take_back)
        executing.control = control
        try:
            with (
                self._run_settings.model_copy(),
                prefect_client_context(),
                controlled(control),
            ):
                state = run_flow(self.flows[executing.deployment], flow_run=run, return_type="state")
            log.info("%s run %s: %s", executing.deployment, run.name, getattr(state, "type", state))
        except RunCancelled:
            log.info("%s run %s stopped: cancelled", executing.deployment, run.name)
        except BaseException:  # noqa: BLE001 - whatever a flow raises, its run is ended below
            log.exception("%s run %s raised out of the engine", executing.deployment, run.name)
        finally:
            control.finish()
            self._conclude(executing)
            executions.release(self.store, str(run.id), self.id)
            self._forget(run.id, lane)

    def _conclude(self, executing: Executing) -> None:
        """A cancelled run ends `Cancelled`; one the engine left unfinished ends `Crashed`."""
        try:
            with prefect_client_context() as context:
                client = context.client
                state = client.read_flow_run(executing.run.id).state
                if state is None or state.type not in UNFINISHED_BY_ENGINE:
                    return  # ended, or already scheduled again (a Retry from the UI): not ours to end
                if state.type == StateType.CANCELLING or (
                    executing.control and executing.control.cancel_requested
                ):
                    ended = Cancelled(message="Cancelled: the warm executor stopped the run")
                else:
                    ended = Crashed(message="The flow engine ended without a final state")
                propose_state_sync(client, ended, flow_run_id=executing.run.id, force=True)
        except Exception:  # noqa: BLE001 - the sweep hands it back later
            log.exception("could not conclude run %s", executing.run.id)

    # --- cancellation and stranded runs -------------------------------------------------------

    def watch_cancellations(self) -> None:
        with self._lock:
            ids = [run_id for run_id, e in self.executing.items() if e.control is not None]
        if not ids:
            return
        cancelling = self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=ids),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLING])),
            )
        )
        for run in cancelling:
            executing = self.executing.get(run.id)
            if executing is not None and executing.control is not None and executing.control.cancel():
                log.info("cancelling %s run %s", executing.deployment, run.name)

    def sweep(self) -> None:
        """Hand back the runs no live executor holds: `Pending` ones to `Scheduled`; `Running` or
        paused ones to `Crashed` and then `AwaitingRetry`; `Cancelling` ones to `Cancelled`."""
        if not self.deployment_names:
            return
        runs = self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=list(self.deployment_names)),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=STRANDED_STATES)),
            )
        )
        with self._lock:
            mine = set(self.executing)
        candidates = [r for r in runs if r.id not in mine]
        held = executions.held_by_the_living(self.store, [str(r.id) for r in candidates])
        for run in candidates:
            if str(run.id) in held:
                continue
            deployment = self.deployment_names[run.deployment_id]  # type: ignore[index]
            if not executions.take(self.store, str(run.id), deployment, self.id):
                continue
            try:
                self._hand_back(self.client.read_flow_run(run.id))
            finally:
                executions.release(self.store, str(run.id), self.id)

    def _hand_back(self, run: FlowRun) -> None:
        state = run.state
        if state is None or state.type not in STRANDED_STATES:
            return  # it ended between the listing and the claim
        why = "its executor stopped before it ended"
        if state.type == StateType.PENDING:
            new = Scheduled(message=f"Handed back: {why} before starting it")
        elif state.type == StateType.CANCELLING:
            new = Cancelled(message=f"Cancelled: {why}")
        else:
            propose_state_sync(
                self.client, Crashed(message=f"Crashed: {why}"), flow_run_id=run.id, force=True
            )
            if run.run_count >= MAX_RUNS:
                log.warning("run %s crashed %d times; left Crashed", run.name, run.run_count)
                return
            new = AwaitingRetry(message=f"Handed back: {why}; running it again")
        propose_state_sync(self.client, new, flow_run_id=run.id, force=True)
        log.info("handed back run %s (%s -> %s)", run.name, state.type.value, new.name)
