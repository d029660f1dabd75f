"""Replicas killed under load: what survives when one process of the HA topology dies.

Real parts: `watchkeeper up --ha` (PostgreSQL, Redis, HAProxy, two Prefect API servers and its
background-services process, two services, two warm executors, two clustered Alertmanagers, two
Prometheus servers), on free loopback ports in a temporary home. The load, through the load
balancer: `--rate` predictions a second of the example's credit model through `watchkeeper.client`
(80 % labelled two seconds later), and one alert a second (`ModelAccuracyCritical` for a model of
its own) posted to both Alertmanagers as a Prometheus pair does; each one's playbook opens a
circuit breaker on an HTTP stand-in, so every alert must reach it exactly once.

For each fault in turn: `--settle` seconds of load, then the victim is killed with SIGKILL (its
whole process group; PostgreSQL is restarted instead, a fast shutdown), brought back after
`--restart-after` seconds as a supervisor would (`up` starts what is not running), and watched for
`--observe` seconds. Then the client is flushed and the store is read:

- `lost`, `duplicated`: predictions and labels the client had acknowledged, against the store's
  counts (`watchkeeper_predictions_total`, `ai_model_labelled_predictions_total`);
- `remediations_per_action`: the most requests one alert's breaker received; `missing_actions`:
  alerts of the phase whose breaker received none within 90 s;
- `stranded_max_s`: the longest a flow run stayed Pending or Running with no claim of a live
  executor (a dead one's), until another took it over (polled every second);
- `late_slots`, `skipped_slots`, `twice_slots`: the collection's slots (every 15 s in the example)
  from the kill to the end of the phase: started more than 60 s late, never run, or run more than
  once;
- `recovery_s`: from the kill until a one-prediction POST through the load balancer is stored again
  and an alert posted after the kill is acted on within twice the quiet median.

Baseline: the issue's limits (nothing lost or doubled, one action per alert, 60 s for a stranded
run or a late slot). The client backs off at most 5 s here (30 s by default), so that recovery is
the topology's, not the client's backoff.

Usage: python benchmarks/scaleout.py [--faults service,executor,...] [--rate 1000]; the last line is
JSON: {"faults": {"<kind>": {...}}, "ratios": {...}}.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.volume import PROBE, bench_config  # noqa: E402
from tests.standins import HttpRecorder  # noqa: E402
from watchkeeper.runtime.host import free_port, start_ticks  # noqa: E402

FAULTS = {
    "service": "service-1",
    "executor": "executor-1",
    "prefect_api": "prefect-api-1",
    "prefect_services": "prefect-services",
    "redis": "redis",
    "load_balancer": "load-balancer",
    "alertmanager": "alertmanager-1",
    "prometheus": "prometheus-1",
    "postgres": "postgres",
}
MODEL = "credit_approval"
LABEL_DELAY_S = 2.0
LATE_LIMIT_S = 60.0
COLLECTION = "collect-model-metrics"


class PredictionLoad(threading.Thread):
    """`rate` predictions a second through the client, a share of them labelled a little later."""

    def __init__(self, url: str, rate: float, events: list[Any], models: list[str]) -> None:
        super().__init__(name="prediction-load", daemon=True)
        from watchkeeper.client import WatchkeeperClient

        self.events, self.models = events, models
        self.client = WatchkeeperClient(url, batch_size=500, flush_interval=0.2, max_backoff=5.0)
        self.rate, self.predictions, self.labels = rate, 0, 0
        self.halt, self.paused, self.idle = threading.Event(), threading.Event(), threading.Event()
        self._pending: deque[tuple[float, int]] = deque()

    def run(self) -> None:
        tick = 0.1
        while not self.halt.is_set():
            started, base = time.monotonic(), self.predictions
            while not (self.halt.is_set() or self.paused.is_set()):
                due = base + int((time.monotonic() - started) * self.rate)
                while self.predictions < due:
                    self._predict(self.predictions)
                now = time.monotonic()
                while self._pending and self._pending[0][0] <= now:
                    self._label(self._pending.popleft()[1])
                self.halt.wait(tick)
            while self._pending:
                self._label(self._pending.popleft()[1])
            self.idle.set()
            while self.paused.is_set() and not self.halt.wait(tick):
                pass
            self.idle.clear()

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """No new record until the block ends: the books can be balanced exactly."""
        self.paused.set()
        self.idle.wait()
        try:
            yield
        finally:
            self.paused.clear()

    def _predict(self, n: int) -> None:
        event = self.events[n % len(self.events)]
        self.client.log_prediction(
            self.models[n % len(self.models)],
            "v1",
            f"p-{n}",
            event.features,
            prediction=event.prediction,
            score=event.score,
            latency_seconds=event.latency_seconds,
        )
        self.predictions += 1
        if n % 5:  # four in five
            self._pending.append((time.monotonic() + LABEL_DELAY_S, n))

    def _label(self, n: int) -> None:
        model = self.models[n % len(self.models)]
        self.client.log_label(model, f"p-{n}", self.events[n % len(self.events)].label)
        self.labels += 1

    def stop(self) -> None:
        self.halt.set()
        self.paused.clear()
        self.join()


@dataclass
class AlertLoad:
    """One new alert a second, posted to every Alertmanager as both Prometheus servers would."""

    alertmanagers: list[str]
    posted: dict[int, float] = field(default_factory=dict)
    halt: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, name="alert-load", daemon=True).start()

    def _run(self) -> None:
        n = 0
        while not self.halt.wait(1.0):
            if self.paused.is_set():
                continue
            self.posted[n] = time.monotonic()
            alert = [
                {
                    "labels": {
                        "bench": "act",  # the benchmark's playbook matches it
                        "alertname": "ModelAccuracyCritical",
                        "severity": "critical",
                        "model_name": f"scale-{n}",
                        # its own service: an alert with none is near every other (tasks/correlation.py)
                        "service": f"scale-{n}",
                    },
                    "annotations": {"summary": "scale-out benchmark"},
                    "startsAt": datetime.now(UTC).isoformat(),
                    "endsAt": (datetime.now(UTC) + timedelta(minutes=30)).isoformat(),
                }
            ]
            for _ in range(2):  # each Prometheus of the pair sends it to every Alertmanager
                for url in self.alertmanagers:
                    with contextlib.suppress(httpx.HTTPError):
                        httpx.post(f"{url}/api/v2/alerts", json=alert, timeout=2)
            n += 1


class RunWatch(threading.Thread):
    """Runs stranded: `Pending` or `Running` in Prefect with no claim of a live executor in the store
    (a claim is written before `Pending`, so only a dead executor's runs lack one). Polled every
    second; a run's span lasts from the first poll that finds it stranded to the last."""

    def __init__(self, apis: list[str], store_url: str) -> None:
        super().__init__(name="run-watch", daemon=True)
        from sqlalchemy import create_engine

        self.apis, self.halt = apis, threading.Event()
        self.engine = create_engine(store_url, pool_pre_ping=True)
        self.stranded: dict[str, list[float]] = {}

    def run(self) -> None:
        body = {"flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING"]}}}, "limit": 200}
        while not self.halt.wait(1.0):
            held = self._held_by_live_executors()
            if held is None:
                continue
            for api in self.apis:
                try:
                    runs = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=3).json()
                except (httpx.HTTPError, ValueError):
                    continue
                now = time.monotonic()
                for run in runs if isinstance(runs, list) else []:
                    if run["id"] not in held:
                        self.stranded.setdefault(run["id"], [now, now])[1] = now
                break

    def _held_by_live_executors(self) -> set[str] | None:
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        query = text(
            "SELECT c.flow_run_id, e.pid FROM executor_claims c JOIN executors e ON e.id = c.executor_id"
        )
        try:
            with self.engine.connect() as connection:
                claims = connection.execute(query).all()
        except SQLAlchemyError:
            return None
        return {run_id for run_id, pid in claims if start_ticks(pid) is not None}

    def longest_since(self, since: float) -> float:
        spans = [last - first for first, last in self.stranded.values() if last >= since]
        return round(max(spans, default=0.0), 1)


def store_counts(url: str) -> tuple[float, float]:
    """Predictions and labels the store counts for the benchmark's models (from /metrics/store)."""
    text = httpx.get(f"{url}/metrics/store", timeout=10).text
    totals = defaultdict(float)
    for line in text.splitlines():
        for name in ("watchkeeper_predictions_total", "ai_model_labelled_predictions_total"):
            if line.startswith(name + "{") and f'model_name="{PROBE}"' not in line:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals["watchkeeper_predictions_total"], totals["ai_model_labelled_predictions_total"]


class Scaleout:
    """The topology, its load, and one fault at a time."""

    def __init__(self, folder: Path, rate: float, recorder: HttpRecorder, models: int = 1) -> None:
        self.recorder = recorder
        os.environ["WATCHKEEPER_HOME"] = str(folder / "home")
        os.environ["WATCHKEEPER_CONFIG"] = str(bench_config(folder, models, recorder))
        for name in ("PREFECT_API_URL", "WATCHKEEPER_DATABASE_URL"):
            os.environ.pop(name, None)
        from watchkeeper.local.demo import DemoTraffic, write_reference
        from watchkeeper.local.ha import HaStack
        from watchkeeper.local.stack import Ports
        from watchkeeper.settings import Settings

        ports = Ports(*(free_port() for _ in fields(Ports)))
        settings = Settings()
        self.stack = HaStack(settings, ports)
        traffic = DemoTraffic(model_name=MODEL, train_size=2000, seed=11, reference_size=5000)
        write_reference(traffic.reference, settings.monitoring.model(MODEL).reference.path)
        self.events = traffic.next_batch(5000)
        self.models = [m.name for m in settings.monitoring.models if m.name != PROBE]
        self.collection_interval = settings.monitoring.schedules.collect_model_metrics
        self.rate = rate
        self.lb = self.stack.service_url
        self.direct_predictions = 0  # sent beside the client (the probes, the floods): expected too
        self.usual_action_s: float | None = None

    def up(self) -> None:
        self.stack.up(lambda name, outcome: print(f"{name:<18} {outcome}", flush=True))
        topology = self.stack.topology
        self.apis = [f"http://127.0.0.1:{p}/api" for p in topology.prefect_apis]
        self.load = PredictionLoad(self.lb, self.rate, self.events, self.models)
        self.alerts = AlertLoad([f"http://127.0.0.1:{p}" for p in topology.alertmanagers])
        self.watch = RunWatch([self.stack.prefect_api_url, *self.apis], self.stack.store_url)
        self.load.start()
        self.alerts.start()
        self.watch.start()

    def down(self) -> None:
        for stopper in (self.alerts.halt.set, self.watch.halt.set, self.load.stop):
            stopper()
        self.load.client.close(timeout=10)
        self.stack.down(lambda name, outcome: None)
        shutil.rmtree(self.stack.topology.postgres_dir, ignore_errors=True)

    def kill(self, fault: str) -> None:
        victim = FAULTS[fault]
        if fault == "postgres":
            self.stack.stop(victim)
            self._restart()
            return
        record = self.stack.record(victim)
        if record is not None and record.alive():
            os.killpg(record.pid, signal.SIGKILL)

    def _restart(self) -> None:
        self.stack.up(lambda name, outcome: None)

    @staticmethod
    def _prediction(model: str, request_id: str, event: Any) -> dict[str, Any]:
        """A prediction record as POSTed to /v1/predictions, outside the client."""
        return {
            "model_name": model,
            "model_version": "v1",
            "request_id": request_id,
            "timestamp": datetime.now(UTC).isoformat(),
            "features": event.features,
            "prediction": event.prediction,
        }

    def probe_intake(self, fault: str, since: float) -> float:
        """Seconds from `since` until one prediction POSTed through the load balancer is stored; the
        same request id is sent again until it is (and counted once)."""
        body = [self._prediction(MODEL, f"probe-{fault}", self.events[0])]
        while True:
            try:
                answer = httpx.post(f"{self.lb}/v1/predictions", json=body, timeout=2)
            except httpx.HTTPError:
                answer = None
            if answer is not None and answer.status_code == 200:
                self.direct_predictions += 1
                return time.monotonic() - since
            if answer is not None and 400 <= answer.status_code < 500:
                raise SystemExit(f"the probe was refused: {answer.status_code} {answer.text}")
            time.sleep(0.25)

    def phase(self, fault: str, settle: float, restart_after: float, observe: float) -> dict[str, Any]:
        time.sleep(settle)
        first_alert = max(self.alerts.posted, default=-1) + 1
        if self.usual_action_s is None:
            self.usual_action_s = self._usual_action()
        killed_at = time.monotonic()
        self.kill(fault)
        intake: list[float] = []  # probed beside the restart: intake may need the victim back
        probe = threading.Thread(target=lambda: intake.append(self.probe_intake(fault, killed_at)))
        probe.start()
        time.sleep(max(0.0, killed_at + restart_after - time.monotonic()))
        self._restart()
        time.sleep(max(0.0, killed_at + restart_after + observe - time.monotonic()))
        probe.join()
        intake_s = intake[0]
        last_alert = max(self.alerts.posted)
        return {
            **self._books(),
            **self._actions(first_alert, last_alert, killed_at, intake_s),
            "stranded_max_s": self.watch.longest_since(killed_at),
            **self._slots(killed_at),
        }

    def _usual_action(self) -> float:
        delays = [
            self.recorder.to(f"/breaker/scale-{n}/open")[0].at - posted
            for n, posted in list(self.alerts.posted.items())
            if self.recorder.to(f"/breaker/scale-{n}/open")
        ]
        return statistics.median(delays) if delays else 10.0

    def _books(self) -> dict[str, Any]:
        """Acknowledged against stored, with the load paused and the client flushed (labels may wait
        for the collection's join a little longer)."""
        with self.load.pause():
            self.load.client.flush(timeout=120)
            expected = (self.load.predictions + self.direct_predictions, self.load.labels)
            deadline = time.monotonic() + 90
            stored = store_counts(self.lb)
            while stored != expected and time.monotonic() < deadline:
                time.sleep(1)
                stored = store_counts(self.lb)
        stats = self.load.client.stats()
        return {
            "lost": int(sum(max(0, e - s) for e, s in zip(expected, stored, strict=True))),
            "duplicated": int(sum(max(0, s - e) for e, s in zip(expected, stored, strict=True))),
            "predictions": expected[0],
            "labels": expected[1],
            "client_dropped": stats.dropped,
            "client_retries": stats.retries,
        }

    def _actions(self, first: int, last: int, killed_at: float, intake_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + 90
        wanted = range(first, last + 1)
        while time.monotonic() < deadline and not all(
            self.recorder.to(f"/breaker/scale-{n}/open") for n in wanted
        ):
            time.sleep(0.5)
        counts = [len(self.recorder.to(f"/breaker/scale-{n}/open")) for n in wanted]
        usual = 2 * (self.usual_action_s or 10.0)
        acted = [
            self.recorder.to(f"/breaker/scale-{n}/open")[0].at - killed_at
            for n in wanted
            if self.alerts.posted[n] >= killed_at
            and self.recorder.to(f"/breaker/scale-{n}/open")
            and self.recorder.to(f"/breaker/scale-{n}/open")[0].at - self.alerts.posted[n] <= usual
        ]
        return {
            "remediations_per_action": max(counts, default=0),
            "missing_actions": counts.count(0),
            "intake_recovery_s": round(intake_s, 1),
            "recovery_s": round(max(intake_s, min(acted, default=float("inf"))), 1),
        }

    def _slots(self, killed_at: float) -> dict[str, Any]:
        """The collection's slots from the kill until 60 s ago: late, skipped, run twice."""
        wall = time.time() - time.monotonic()
        start = datetime.fromtimestamp(killed_at + wall, UTC)
        end = datetime.now(UTC) - timedelta(seconds=LATE_LIMIT_S)
        runs = self._collection_runs(start, end)
        if runs is None:
            return {"late_slots": None, "skipped_slots": None, "twice_slots": None}
        by_slot: dict[str, list[dict]] = defaultdict(list)
        for run in runs:
            by_slot[run["expected_start_time"]].append(run)
        late = skipped = twice = 0
        for slot, found in by_slot.items():
            started = [r for r in found if r.get("start_time")]
            if not started:
                skipped += 1
                continue
            delay = min(
                (datetime.fromisoformat(r["start_time"]) - datetime.fromisoformat(slot)).total_seconds()
                for r in started
            )
            late += delay > LATE_LIMIT_S
            twice += len(started) > 1 or any(r.get("run_count", 1) > 1 for r in started)
        expected = int((end - start) // self.collection_interval)
        skipped += max(0, expected - len(by_slot))
        return {"late_slots": late, "skipped_slots": skipped, "twice_slots": twice}

    def race(self, copies: int = 6, slow_s: float = 5.0) -> dict[str, Any]:
        """One alert in `copies` notifications (as Alertmanager re-sends), posted at once through the
        load balancer: overlapping handle-alerts runs on both executors, and a target that takes
        `slow_s` to answer. It must receive one request."""
        target = "/breaker/race-0/open"
        self.recorder.delay[target] = slow_s
        labels = {"alertname": "ModelAccuracyCritical", "severity": "critical", "bench": "act"}
        labels |= {"model_name": "race-0", "service": "race-0"}
        alert = {
            "status": "firing",
            "labels": labels,
            "annotations": {"summary": "scale-out race"},
            "startsAt": datetime.now(UTC).isoformat(),
            "fingerprint": "race000000000000",
        }

        def post(copy: int) -> None:
            # Each copy also carries an alert of its own (no playbook matches it), so that it is new to
            # the intake and owes a run of its own: the runs overlap, each with the racing alert.
            own = {**alert, "labels": {"alertname": f"RaceCompanion{copy}", "service": f"race-{copy}"}}
            own["fingerprint"] = f"racecompanion{copy:03d}"
            body = {"version": "4", "groupKey": f"race-{copy}", "status": "firing", "alerts": [alert, own]}
            body["receiver"] = "watchkeeper"
            httpx.post(f"{self.lb}/v1/alertmanager", json=body, timeout=30).raise_for_status()

        logs = self.stack.settings.logs_dir
        executors = ("executor-1", "executor-2")

        def runs_by() -> dict[str, int]:
            return {name: (logs / f"{name}.log").read_text().count("handle-alerts run") for name in executors}

        self.alerts.paused.set()
        time.sleep(10)  # the alerts already posted are handled
        before = runs_by()
        posters = [threading.Thread(target=post, args=(copy,)) for copy in range(copies)]
        for poster in posters:
            poster.start()
        for poster in posters:
            poster.join()
        deadline = time.monotonic() + 60
        while not self.recorder.to(target) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2 * slow_s)  # time for a second request, were there to be one
        after = runs_by()
        self.alerts.paused.clear()
        return {
            "requests": len(self.recorder.to(target)),
            "runs_by_executor": {name: after[name] - before[name] for name in executors},
        }

    def intake_ratio(self, seconds: float, senders: int = 4) -> dict[str, Any]:
        """Predictions stored a second by a flood through the load balancer (`senders` threads
        posting batches of 1,000), two services against one (the other stopped)."""
        with self.load.pause():
            two = self._flood("two", seconds, senders)
            self.stack.stop("service-2")
            one = self._flood("one", seconds, senders)
            self._restart()
        return {"intake_2_vs_1": round(two / one, 3), "intake_two_rps": two, "intake_one_rps": one}

    def _flood(self, name: str, seconds: float, senders: int) -> float:
        stored = [0] * senders

        def send(sender: int) -> None:
            deadline, batch = time.monotonic() + seconds, 0
            with httpx.Client(timeout=30) as client:
                while time.monotonic() < deadline:
                    request, models = f"flood-{name}-{sender}-{batch}", self.models
                    body = [
                        self._prediction(models[i % len(models)], f"{request}-{i}", self.events[i])
                        for i in range(1000)
                    ]
                    answer = client.post(
                        f"{self.lb}/v1/predictions",
                        content=gzip.compress(json.dumps(body).encode()),
                        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                    )
                    if answer.status_code == 200:
                        stored[sender] += answer.json()["stored"]
                    batch += 1

        started = time.monotonic()
        threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.direct_predictions += sum(stored)
        return round(sum(stored) / (time.monotonic() - started), 1)

    def executor_ratio(self, seconds: float) -> dict[str, Any]:
        """The collection's median run time under the live load, with two executors and with one:
        the ratio is one's over two's (above 1, two are faster)."""
        two = self._collection_run_time(seconds)
        self.stack.stop("executor-2")
        one = self._collection_run_time(seconds)
        self._restart()
        ratio = round(one / two, 3) if one and two else None
        return {"executors_2_vs_1": ratio, "collection_run_s_two": two, "collection_run_s_one": one}

    def _collection_run_time(self, seconds: float) -> float | None:
        start = datetime.now(UTC)
        time.sleep(seconds)
        runs = self._collection_runs(start, datetime.now(UTC)) or []
        times = [r["total_run_time"] for r in runs if r.get("state_type") == "COMPLETED"]
        return round(statistics.median(times), 3) if times else None

    def _collection_runs(self, start: datetime, end: datetime) -> list[dict] | None:
        api = self.stack.prefect_api_url
        try:
            deployment = httpx.get(f"{api}/deployments/name/{COLLECTION}/{COLLECTION}", timeout=5).json()
            body = {
                "deployments": {"id": {"any_": [deployment["id"]]}},
                "flow_runs": {
                    "expected_start_time": {"after_": start.isoformat(), "before_": end.isoformat()}
                },
                "limit": 200,
            }
            return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()
        except (httpx.HTTPError, ValueError, KeyError):
            return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--restart-after", type=float, default=10.0)
    parser.add_argument("--observe", type=float, default=90.0)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--ratio-seconds", type=float, default=60.0, help="0 skips the ratios")
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise SystemExit(f"unknown faults {sorted(unknown)}: pick from {', '.join(FAULTS)}")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="scaleout-") as folder, HttpRecorder() as recorder:
        run = Scaleout(Path(folder), args.rate, recorder, args.models)
        run.up()
        ratios: dict[str, Any] = {}
        race: dict[str, Any] = {}
        try:
            for fault in faults:
                results[fault] = run.phase(fault, args.settle, args.restart_after, args.observe)
                print(f"{fault:<18} {json.dumps(results[fault])}", flush=True)
            race = run.race()
            print(f"{'race':<18} {json.dumps(race)}", flush=True)
            if args.ratio_seconds:
                ratios = run.intake_ratio(args.ratio_seconds) | run.executor_ratio(args.ratio_seconds)
                print(f"{'ratios':<18} {json.dumps(ratios)}", flush=True)
        finally:
            run.down()
    print(
        json.dumps(
            {
                "faults": results,
                "ratios": ratios,
                "race": race,
                "rate": args.rate,
                "models": args.models,
                "usual_action_s": run.usual_action_s,
            }
        )
    )


if __name__ == "__main__":
    main()
