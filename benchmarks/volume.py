"""Monitoring at production volume: what the whole stack costs per prediction, from 20 to 10,000 a second.

Real parts: `watchkeeper up` (Prefect server, the service, the warm executor running the example
config's schedules: collection every 15 s with segments, CBPE and record checks, drift and data
quality, Prometheus, Alertmanager), on SQLite or on a PostgreSQL cluster of its own. A generator
process sends through `watchkeeper.client`, one client per model as each model service has its own
(batches of up to 1,000, gzipped): it first fills the quality
window with predictions at past times, then sends live for `--live` seconds at the level's rate,
with labels for 80 % of the predictions arriving 30 s to 5 min after them (the fill's recent
predictions' labels fall due during the live phase, as if it had begun at the fill's end), and
`intake.raw_predictions` at 1 %. Each level gets a fresh stack and store.

Per level: `intake_rps` (predictions stored per second, live, from the service's own counter),
`labels_rps` (labels stored per second, likewise), `intake_posts_per_s` (POSTs of predictions
and of labels the service answered 200 a second, live, from its request counter: how well the
clients batch; with several service processes, none),
`intake_p99_ms` (per POST of predictions, live), `cpu_cores` (user + system CPU of every stack process and its
children over the live seconds; the generator apart as `generator_cores`), `cpu_s_per_1k`,
`cycle_cpu_s` (p95 of the collection's own CPU per cycle and model, from its log), `freshness_s`
(a batch of labels that moves a probe model's accuracy from 1.0 to 0.5, until the service's
`/metrics` shows it), `store_bytes_per_prediction` (the store on disk over the predictions sent).
`store_bytes_by_table` names the largest tables (with their indexes).
With `--fault`, the spread level times 20 Alertmanager notifications to their first action while
its load runs (`act_p95_s`, as `benchmarks/remediation.py` does), then collapses the loaded model's
accuracy and times its alert's webhook (`seconds_to_webhook`); that level's labels come after the
fault drill's delay (20 s) so that the time compares with the drill's. The example's daily model
report first runs 5 minutes after start-up, inside the live phase at these fills: every model's
report at once. `--first-report 1h` keeps it out, to measure the intake's steady cost alone.

Baseline: before this, a collection cycle re-read every raw row of its window: 0.66 s at 20/s,
3.65 s at 100/s, 16.9 s at 500/s (one model, CPU, 2 cores); the intake stored 6,121 records/s on
SQLite and 2,492-2,967 on PostgreSQL (batches of 100).

Usage: python benchmarks/volume.py [--database sqlite|postgresql] [--levels 20,500,2000,5000,10000]
       [--spread 50] [--spread-rate R] [--live 180] [--fault] [--service-processes N]
       [--first-report 1h]. The last line is JSON.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.remediation import notification, percentile, timeline  # noqa: E402
from tests.standins import HttpRecorder  # noqa: E402
from watchkeeper.client import WatchkeeperClient  # noqa: E402
from watchkeeper.evaluation.drill import LABEL_DELAY_SECONDS  # noqa: E402
from watchkeeper.local.pgtemp import new_database, postgres_cluster  # noqa: E402
from watchkeeper.local.stack import Stack, free_ports  # noqa: E402
from watchkeeper.settings import DEFAULT_CONFIG, Settings  # noqa: E402

WATCHKEEPER = str(Path(sys.executable).parent / "watchkeeper")
TICKS = os.sysconf("SC_CLK_TCK")
PROBE = "freshness_probe"
BASELINE = {
    "cycle_cpu_s": {20: 0.66, 100: 3.65, 500: 16.9},
    "intake_rps": {"sqlite": 6121, "postgresql": 2967},
}
DRILL_ACCURACY_COLLAPSE_S = 44.8  # docs/benchmarks.md: the drill's concept drift, ModelAccuracyCollapse


def bench_config(
    folder: Path,
    models: int,
    http: HttpRecorder | None,
    processes: int = 1,
    template_name: str = "credit_approval",
    first_report: str | None = None,
) -> Path:
    """The example config with `models` copies of its model `template_name` (and the probe's);
    `first_report` replaces its `reports.first_after`."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    template = next(m for m in data["models"] if m["name"] == template_name)
    names = [template_name] + [f"{template_name}_{i:02d}" for i in range(1, models)]
    data["models"] = [{**template, "name": name} for name in names]
    data["models"].append({**template, "name": PROBE, "segments": []})
    data["datasets"] = [d for d in data.get("datasets", []) if d.get("model") in names]
    data["intake"] = {**data.get("intake", {}), "raw_predictions": "1%", "processes": processes}
    if first_report is not None:
        data["reports"] = {**data.get("reports", {}), "first_after": first_report}
    if http is not None:
        data["remediation"] = {
            "max_actions_per_hour": 10_000,
            "playbooks": [
                {
                    "name": "break-the-circuit",
                    "enabled": True,
                    "cooldown": "0s",
                    "match": {"alertname": "ModelAccuracyCritical", "labels": {"bench": "act"}},
                    "actions": [
                        {"action": "circuit_breaker", "url": f"{http.url}/breaker/{{model_name}}/open"}
                    ],
                }
            ],
        }
    path = folder / "watchkeeper.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------- the generator (its own process)


class TimedClient(WatchkeeperClient):
    """The client, timing each POST of predictions."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.post_seconds: list[float] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _deliver(self, path: str, batch: list) -> None:  # type: ignore[override]
        started = time.perf_counter()
        super()._deliver(path, batch)
        if path.endswith("predictions"):
            self.post_seconds.append(time.perf_counter() - started)


def generate(args: argparse.Namespace) -> None:
    """Fill the quality window, then send live; print the client's figures as JSON."""
    from watchkeeper.local.demo import DemoTraffic

    # A prime number of events: cycled round-robin over the models, each model sees all of them
    # (with 20,000 and 50 models, model m would see only the events whose index is m mod 50).
    pool = DemoTraffic(train_size=2000, seed=11).next_batch(20_011)
    models = args.models.split(",")
    # One client per model, as each model service has its own: its batches hold its own records.
    clients = {
        model: TimedClient(args.url, batch_size=1000, max_queued=2_000_000 // len(models)) for model in models
    }
    rng = random.Random(5)
    sequence = 0

    def send(at: datetime, wrong: bool = False) -> tuple[str, str, int, float] | None:
        nonlocal sequence
        event = pool[sequence % len(pool)]
        model = models[sequence % len(models)]
        request_id = f"{model}-{sequence}"
        sequence += 1
        prediction = (1 - event.label) if wrong else event.prediction
        clients[model].log_prediction(
            model,
            "v1",
            request_id,
            event.features,
            prediction,
            event.score,
            event.latency_seconds,
            event.error,
            at,
        )
        if rng.random() < 0.8:
            return model, request_id, event.label, event.business_value
        return None

    # Labels by the time they are due, each after its own delay (a queue in sending order would
    # hold every label behind the first one's, up to 5 minutes).
    pending: list[tuple[float, int, tuple]] = []
    delay = [float(seconds) for seconds in args.label_delay.split(",")]
    now = datetime.now(UTC)
    window = timedelta(seconds=args.window)
    for i in range(args.fill):
        at = now - window + window * (i / max(1, args.fill))
        labelled = send(at)
        if labelled is None:
            continue
        # A fill prediction's label is due `delay` after its time: sent now when that has passed,
        # else as if the live phase began at the fill's `now`, so labels flow at their steady rate
        # from the first live second.
        due_in = (at - now).total_seconds() + rng.uniform(*delay)
        if due_in <= 0:
            clients[labelled[0]].log_label(labelled[0], labelled[1], labelled[2], labelled[3])
        else:
            pending.append((due_in, sequence, labelled))
    for client in clients.values():
        client.flush()
        client.post_seconds.clear()  # intake_p99_ms is the live phase's
    print(json.dumps({"filled": args.fill, "at": time.time()}), flush=True)
    started = time.monotonic()
    pending = [(started + due_in, order, labelled) for due_in, order, labelled in pending]
    heapq.heapify(pending)
    cpu_started = time.process_time()
    sent_live = 0
    collapse_at = None
    while (elapsed := time.monotonic() - started) < args.live:
        wrong = args.collapse_at is not None and elapsed >= args.collapse_at
        if wrong and collapse_at is None:
            collapse_at = time.time()
        due = int(elapsed * args.rate) - sent_live
        for _ in range(due):
            labelled = send(datetime.now(UTC), wrong)
            if labelled:
                heapq.heappush(pending, (time.monotonic() + rng.uniform(*delay), sequence, labelled))
        sent_live += max(0, due)
        ripe = time.monotonic()
        while pending and pending[0][0] <= ripe:
            _, _, (model, request_id, label, value) = heapq.heappop(pending)
            clients[model].log_label(model, request_id, label, value)
        time.sleep(0.01)
    cpu = time.process_time() - cpu_started
    for client in clients.values():
        client.close(timeout=120)
    stats = [client.stats() for client in clients.values()]
    posts = sorted(seconds for client in clients.values() for seconds in client.post_seconds)
    print(
        json.dumps(
            {
                "sent_live": sent_live,
                "generator_cpu_s": cpu,
                "dropped": sum(s.dropped for s in stats),
                "refused": sum(s.refused for s in stats),
                "retries": sum(s.retries for s in stats),
                "intake_p99_ms": round(1000 * posts[int(0.99 * (len(posts) - 1))], 1) if posts else None,
                "collapse_at": collapse_at,
            }
        ),
        flush=True,
    )


# ---------------------------------------------------------------- the measuring side


def process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / TICKS  # utime, stime, cutime, cstime


def descendants(roots: set[int]) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def postmaster(port: int) -> set[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"postgres") and str(port).encode() in b" ".join(argv):
                return {int(entry.name)}
    return set()


def tree_cpu(roots: dict[str, set[int]]) -> dict[str, float]:
    """CPU seconds of each named process and its children."""
    return {name: sum(process_cpu(pid) for pid in descendants(pids)) for name, pids in roots.items()}


def metric_value(text: str, name: str, labels: dict[str, str]) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def intake_posts(text: str) -> dict[str, float]:
    """POSTs of predictions and of labels answered 200 so far (the service's request counter)."""
    paths = {"predictions": "/v1/predictions", "labels": "/v1/feedback"}
    requests = "watchkeeper_http_requests_total"
    return {
        kind: metric_value(text, requests, {"endpoint": path, "method": "POST", "code": "200"}) or 0.0
        for kind, path in paths.items()
    }


def probe_freshness(service: str) -> float | None:
    """Predictions of the probe model, half of them labelled right; once its accuracy reads 1.0 on
    `/metrics`, labels that make the other half wrong: seconds from their acknowledged POST until
    `/metrics` shows accuracy 0.5."""
    now = datetime.now(UTC)
    records = [
        {
            "model_name": PROBE,
            "model_version": "v1",
            "request_id": f"probe-{i}",
            "timestamp": (now - timedelta(seconds=60)).isoformat(),
            "features": {"salary": 50_000.0},
            "prediction": 1,
            "score": 0.9,
        }
        for i in range(400)
    ]
    httpx.post(f"{service}/v1/predictions", json=records, timeout=60).raise_for_status()
    labels = [{"model_name": PROBE, "request_id": f"probe-{i}", "label": 1} for i in range(400)]
    httpx.post(f"{service}/v1/feedback", json=labels[:200], timeout=60).raise_for_status()
    accuracy = {"model_name": PROBE}
    deadline = time.monotonic() + 120
    while (
        metric_value(httpx.get(f"{service}/metrics", timeout=30).text, "ai_model_accuracy_score", accuracy)
        != 1.0
    ):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)
    wrong = [{**label, "label": 0} for label in labels[200:]]
    httpx.post(f"{service}/v1/feedback", json=wrong, timeout=60).raise_for_status()
    acknowledged = time.monotonic()
    while True:
        value = metric_value(
            httpx.get(f"{service}/metrics", timeout=30).text, "ai_model_accuracy_score", accuracy
        )
        if value is not None and value <= 0.95:
            return round(time.monotonic() - acknowledged, 2)
        if time.monotonic() - acknowledged > 300:
            return None
        time.sleep(0.5)


def store_bytes(url: str, home: Path) -> tuple[int, dict[str, int]]:
    """The store's bytes on disk, and the largest tables' with their indexes."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as connection:
        if url.startswith("sqlite"):
            total = sum(p.stat().st_size for p in home.glob("watchkeeper.db*"))
            by_table = connection.execute(
                text(
                    "SELECT coalesce(m.tbl_name, d.name), sum(d.pgsize) FROM dbstat d"
                    " LEFT JOIN sqlite_master m ON m.name = d.name GROUP BY 1"
                )
            ).all()
        else:
            total = connection.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
            by_table = connection.execute(
                text("SELECT relname, pg_total_relation_size(relid) FROM pg_catalog.pg_statio_user_tables")
            ).all()
    engine.dispose()
    largest = sorted(by_table, key=lambda row: -row[1])[:6]
    return int(total), {name: int(size) for name, size in largest}


def cycle_cpu(home: Path, start: datetime, end: datetime) -> float | None:
    """p95 of the collection's CPU per cycle and model over [start, end), from the executor's log
    (JSON lines, `watchkeeper.log_lines`: a `time` and the message `collection cycle: 0.4246 s CPU
    for 2 models`)."""
    per_model = []
    for log in (home / "logs").glob("executor*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "collection cycle:" not in line or not line.startswith("{"):
                continue
            record = json.loads(line)
            if start <= datetime.fromisoformat(record["time"]) < end:
                seconds, models = record["message"].split("collection cycle:")[1].split(" s CPU for ")
                per_model.append(float(seconds) / int(models.split()[0]))
    return round(percentile(per_model, 0.95), 4) if per_model else None


def labels_total(
    scrape: str, family: str, models: list[str], versions: tuple[str, ...] = ("v1", "unknown")
) -> float:
    """Labels stored: joined (under their prediction's version) or waiting for it (`unknown`)."""
    return sum(
        metric_value(scrape, family, {"model_name": n, "model_version": v}) or 0
        for n in models
        for v in versions
    )


def first_alert(url: str, model: str, since: float) -> float | None:
    from sqlalchemy import create_engine, select

    from watchkeeper.store.schema import Alert

    engine = create_engine(url)
    with engine.connect() as connection:
        received = connection.execute(
            select(Alert.received_at)
            .where(Alert.model_name == model, Alert.alertname.like("ModelAccuracy%"))
            .order_by(Alert.received_at)
        ).first()
    engine.dispose()
    if received is None:
        return None
    return received[0].replace(tzinfo=UTC).timestamp() - since


def time_to_act(service: str, prefect_api: str, http: HttpRecorder, runs: int = 20) -> tuple[float, dict]:
    """p95 seconds from each notification's POST to its action, and the median of each step
    (`benchmarks/remediation.py`'s timeline)."""
    latencies, posted, acted = [], {}, {}
    with httpx.Client(timeout=10) as alertmanager:  # kept, as Alertmanager keeps its connection
        for run in range(runs):
            body = notification(run)
            body["alerts"][0]["labels"]["bench"] = "act"
            target = f"/breaker/bench-model-{run}/open"
            started = time.monotonic()
            posted[f"bench-model-{run}"] = time.time()
            while True:  # as Alertmanager does: a notification not answered in 10 s is sent again
                try:
                    alertmanager.post(f"{service}/v1/alertmanager", json=body).raise_for_status()
                    break
                except httpx.TimeoutException:
                    continue
            while not http.to(target):
                if time.monotonic() - started > 60:
                    raise SystemExit(f"act run {run}: no action within 60 s")
                time.sleep(0.01)
            latencies.append(http.to(target)[0].at - started)
            acted[f"bench-model-{run}"] = posted[f"bench-model-{run}"] + latencies[-1]
    steps, _finals = timeline(prefect_api, posted, acted)
    return round(percentile(latencies, 0.95), 3), steps


def run_level(args: argparse.Namespace, rate: int, models: int, database: str, fault: bool) -> dict:
    # The folder outlives the stack: `watchkeeper down` finds its processes by the PID files in it.
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        home = Path(folder) / "home"
        http = stack.enter_context(HttpRecorder()) if fault else None
        if database == "postgresql":
            cluster = stack.enter_context(postgres_cluster())
            url = new_database(cluster)
        else:
            url = f"sqlite:///{home}/watchkeeper.db"
        ports = free_ports()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        env |= {
            "WATCHKEEPER_HOME": str(home),
            "WATCHKEEPER_CONFIG": str(
                bench_config(
                    Path(folder), models, http, args.service_processes, first_report=args.first_report
                )
            ),
            "WATCHKEEPER_DATABASE_URL": url,
        }
        os.environ.update(env)
        settings = Settings()
        write_demo_reference(settings)
        up = subprocess.run(
            [WATCHKEEPER, "up", *(f"--{name}-port={port}" for name, port in ports.items())],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if up.returncode != 0:
            raise SystemExit(up.stdout + up.stderr)
        stack.callback(subprocess.run, [WATCHKEEPER, "down"], env=env, capture_output=True, timeout=300)
        service = f"http://127.0.0.1:{ports['service']}"
        roots = {name: {r.pid} for name in Stack(settings).all_names() if (r := Stack(settings).record(name))}
        if database == "postgresql":
            roots["postgresql"] = postmaster(int(url.rsplit(":", 1)[1].split("/")[0]))
        names = ["credit_approval"] + [f"credit_approval_{i:02d}" for i in range(1, models)]
        fill = min(rate * args.window, args.max_fill)
        generator = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--generate",
                "--url",
                service,
                "--rate",
                str(rate),
                "--models",
                ",".join(names),
                "--live",
                str(args.live),
                "--window",
                str(args.window),
                "--fill",
                str(fill),
                # The fault level's labels come after the drill's delay, so that its time to page
                # compares with the drill's (labels spread over 5 minutes would pace it instead).
                *(
                    [
                        "--collapse-at",
                        str(args.live // 3),
                        "--label-delay",
                        f"{LABEL_DELAY_SECONDS},{LABEL_DELAY_SECONDS}",
                    ]
                    if fault
                    else []
                ),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert generator.stdout is not None
        json.loads(generator.stdout.readline())  # the window is filled
        counted, labels = "watchkeeper_predictions_total", "watchkeeper_feedback_total"
        cpu_before, live_started, live_from = tree_cpu(roots), time.monotonic(), datetime.now(UTC)
        scrape = httpx.get(f"{service}/metrics", timeout=60).text  # one scrape: the live phase has begun
        before = sum(metric_value(scrape, counted, {"model_name": n}) or 0 for n in names)
        labels_before = labels_total(scrape, labels, names)
        posts_before = intake_posts(scrape)
        waited_before = labels_total(scrape, labels, names, ("unknown",))
        freshness = probe_freshness(service)
        prefect_api = f"http://127.0.0.1:{ports['prefect']}/api"
        act, act_steps = time_to_act(service, prefect_api, http) if http is not None else (None, None)
        outcome = json.loads(generator.stdout.readline())
        live = time.monotonic() - live_started
        cpu_after = tree_cpu(roots)
        cpu_by_process = {name: round((cpu_after[name] - cpu_before[name]) / live, 3) for name in roots}
        cpu = sum(cpu_after.values()) - sum(cpu_before.values())
        generator.wait()
        scrape = httpx.get(f"{service}/metrics", timeout=30).text
        after = sum(metric_value(scrape, counted, {"model_name": n}) or 0 for n in names)
        labels_after = labels_total(scrape, labels, names)
        posts = {kind: round((n - posts_before[kind]) / live, 1) for kind, n in intake_posts(scrape).items()}
        waited = labels_total(scrape, labels, names, ("unknown",)) - waited_before
        stored, by_table = store_bytes(url, home)
        level = {
            "rps": rate,
            "models": models,
            "database": database,
            "service_processes": args.service_processes,
            "intake_rps": round((after - before) / live, 1),
            "labels_rps": round((labels_after - labels_before) / live, 1),
            # Labels stored before their prediction (kept waiting, joined by its intake).
            "labels_waited_share": round(waited / max(1.0, labels_after - labels_before), 3),
            # Each service process counts its own requests, and a scrape reaches one of them.
            "intake_posts_per_s": posts if args.service_processes == 1 else None,
            "intake_p99_ms": outcome["intake_p99_ms"],
            "cpu_cores": round(cpu / live, 3),
            "generator_cores": round(outcome["generator_cpu_s"] / live, 3),
            "cores_by_process": cpu_by_process,
            "cpu_s_per_1k": round(cpu / live / max(1e-9, (after - before) / live) * 1000, 4),
            "cycle_cpu_s": cycle_cpu(home, live_from, datetime.now(UTC)),
            "freshness_s": freshness,
            "store_bytes_per_prediction": round(stored / max(1, fill + outcome["sent_live"]), 1),
            "store_bytes_by_table": by_table,
            "dropped": outcome["dropped"],
            "refused": outcome["refused"],
        }
        print(json.dumps(level), flush=True)
        if not fault:
            return {"level": level}
        seconds = None
        deadline = time.monotonic() + 120
        while seconds is None and time.monotonic() < deadline:
            seconds = first_alert(url, "credit_approval", outcome["collapse_at"])
            time.sleep(1)
        return {
            "level": level,
            "fault": {
                "rps": rate,
                "seconds_to_webhook": round(seconds, 1) if seconds is not None else None,
                "drill_accuracy_collapse_s": DRILL_ACCURACY_COLLAPSE_S,
                "act_p95_s": act,
                "act_steps_median_s": act_steps,
            },
        }


def write_demo_reference(settings: Settings) -> None:
    from watchkeeper.local.demo import DemoTraffic, write_reference

    traffic = DemoTraffic(train_size=2000, seed=11, reference_size=5000)
    for model in settings.monitoring.models:
        write_reference(traffic.reference, model.reference.path)  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--levels", default="20,500,2000,5000,10000")
    parser.add_argument(
        "--spread", type=int, default=50, help="models the top level is spread over (0: none)"
    )
    parser.add_argument("--spread-rate", type=int, help="the spread level's rate (default: the top level's)")
    parser.add_argument("--live", type=int, default=180)
    parser.add_argument("--window", type=int, default=1800, help="seconds of quality window to fill")
    parser.add_argument("--max-fill", type=int, default=600_000, help="at most this many fill predictions")
    parser.add_argument(
        "--fault", action="store_true", help="collapse accuracy at the top level and time acting"
    )
    parser.add_argument(
        "--service-processes", type=int, default=1, help="intake.processes: the service's processes"
    )
    parser.add_argument(
        "--first-report",
        help="reports.first_after: when the daily model report first runs (the example's 5m lands "
        "every model's report in the live phase; 1h keeps it out)",
    )
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    parser.add_argument("--fill", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--collapse-at", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--label-delay", default="30,300", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args)
        return
    rates = [int(r) for r in args.levels.split(",") if r]
    levels, fault = [], None
    for rate in rates:
        levels.append(run_level(args, rate, 1, args.database, fault=False)["level"])
    if args.spread:
        result = run_level(args, args.spread_rate or rates[-1], args.spread, args.database, fault=args.fault)
        levels.append(result["level"])
        fault = result.get("fault")
    print(json.dumps({"baseline": BASELINE, "levels": levels, "fault": fault}))


if __name__ == "__main__":
    main()
