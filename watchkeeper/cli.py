"""The `watchkeeper` command line."""

from __future__ import annotations

import getpass
import ipaddress
import json
import sys
import tempfile
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from watchkeeper.config import ConfigError, WatchkeeperConfig
from watchkeeper.settings import Settings
from watchkeeper.stack import Ports, Stack, free_port, healthy, recorded_on_local_stack
from watchkeeper.store import Store
from watchkeeper.times import cli_time, utcnow

app = typer.Typer(
    no_args_is_help=True, help="Watchkeeper: watches AI models in production and acts on what it sees."
)
db_app = typer.Typer(no_args_is_help=True, help="The store's schema.")
app.add_typer(db_app, name="db")
# Piped output (a file, a test, `less`) gets wide tables instead of Rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True)


class State:
    settings: Settings


state = State()


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", envvar="WATCHKEEPER_CONFIG", help="YAML configuration (default: the example)"
        ),
    ] = None,
) -> None:
    try:
        state.settings = Settings(config=config) if config else Settings()
    except ValidationError as exc:
        for error in exc.errors():
            variable = "WATCHKEEPER_" + "_".join(str(part) for part in error["loc"]).upper()
            errors.print(f"error: {variable} {error['msg'].removeprefix('Value error, ')}", highlight=False)
        raise typer.Exit(2) from exc


def load_monitoring() -> WatchkeeperConfig:
    try:
        return state.settings.monitoring
    except ConfigError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
        raise typer.Exit(2) from exc


def open_store() -> Store:
    """The store at the schema's head: a command run before the service still finds its tables."""
    store = state.settings.open_store()
    store.upgrade()
    return store


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations to the store."""
    store = open_store()
    revision = store.upgrade()
    console.print(
        f"store at revision [bold]{revision}[/bold] ({store.url.render_as_string(hide_password=True)})"
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8765,
    allow_unauthenticated: Annotated[
        bool,
        typer.Option(help="Bind beyond loopback even though a role has no credentials (not advised)"),
    ] = False,
) -> None:
    """Run the HTTP service (intake, health, /metrics, alerts, incidents) in the foreground."""
    import uvicorn

    from watchkeeper.service.app import create_app

    settings = state.settings
    credentials = settings.credentials
    if not loopback(host) and not credentials.complete and not allow_unauthenticated:
        missing = [
            r.variable
            for r in (credentials.intake, credentials.alertmanager, credentials.operator)
            if not r.required
        ]
        raise _fail(
            f"refusing to listen on {host} without credentials for every role: set {', '.join(missing)} "
            "(or WATCHKEEPER_API_TOKEN for all), or pass --allow-unauthenticated"
        )
    uvicorn.run(
        create_app(load_monitoring(), open_store(), credentials), host=host, port=port, log_level="info"
    )


@app.command()
def executor() -> None:
    """Run the warm executor in the foreground: serves the deployments, starts the runs the intake
    owes, and executes every run in place (see watchkeeper/executor.py). Without PREFECT_API_URL it
    starts a Prefect server of its own on loopback and stops it when it stops."""
    from watchkeeper.executor_process import run_executor

    run_executor(state.settings, load_monitoring(), open_store())


PortOption = Annotated[int, typer.Option(min=1, max=65535)]


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _stack(
    prefect_port: int,
    service_port: int,
    prometheus_port: int,
    alertmanager_port: int,
    notifications_port: int,
    demo_traffic: bool = False,
) -> Stack:
    ports = Ports(prefect_port, service_port, prometheus_port, alertmanager_port, notifications_port)
    return Stack(state.settings, ports, demo_traffic=demo_traffic)


def _report(name: str, outcome: str) -> None:
    console.print(f"[bold]{name:<16}[/bold] {outcome}", highlight=False)


@app.command()
def up(
    demo_traffic: Annotated[bool, typer.Option(help="Also post demo traffic to the service")] = False,
    prefect_port: PortOption = 4200,
    service_port: PortOption = 8765,
    prometheus_port: PortOption = 9090,
    alertmanager_port: PortOption = 9093,
    notifications_port: PortOption = 9601,
) -> None:
    """Start whatever of the local stack is not already running, on loopback."""
    load_monitoring()
    stack = _stack(
        prefect_port, service_port, prometheus_port, alertmanager_port, notifications_port, demo_traffic
    )
    open_store().upgrade()
    try:
        stack.up(_report)
    except RuntimeError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print()
    for name in stack.all_names():
        record = stack.record(name)
        for label, url in (record.urls if record else {}).items():
            console.print(f"{label:<18} {url}")
    console.print(f"{'Prefect API':<18} {stack.prefect_api_url}")
    console.print(f"\nlogs in {state.settings.logs_dir}; stop with 'watchkeeper down'")


@app.command("notification-sink")
def notification_sink(
    port: PortOption = 9601,
    log: Annotated[Path, typer.Option(help="Append every message received to this JSON-lines file")] = Path(
        "notifications.jsonl"
    ),
) -> None:
    """The local stack's stand-in for Slack and PagerDuty: answers as they do, keeps what it gets
    (GET /messages shows the last 100). For demos and tests on loopback, never production."""
    from watchkeeper.notification_sink import NotificationSink

    NotificationSink(port, log).serve_forever()


@app.command()
def down() -> None:
    """Stop exactly the processes 'watchkeeper up' started."""
    stack = Stack(state.settings)
    stack.down(_report)


@app.command()
def status() -> None:
    """Show which components run and whether they answer their health checks."""
    stack = Stack(state.settings)
    table = Table("component", "pid", "running", "healthy", "url")
    for name in stack.all_names():
        record = stack.record(name)
        running = record is not None and record.alive()
        health = (
            "-"
            if record is None or record.health_url is None
            else ("yes" if healthy(record.health_url) else "no")
        )
        urls = ", ".join(record.urls.values()) if record else ""
        table.add_row(name, str(record.pid) if record else "-", "yes" if running else "no", health, urls)
    console.print(table)


@app.command("demo-traffic")
def demo_traffic(
    url: Annotated[str, typer.Option(help="Watchkeeper service URL")] = "http://127.0.0.1:8765",
    model: Annotated[str, typer.Option(help="Configured model name to report as")] = "credit_approval",
    pipeline: Annotated[
        str | None, typer.Option(help="Configured pipeline to report feature-pipeline runs for ('' for none)")
    ] = "credit_feature_pipeline",
    rate: Annotated[
        float, typer.Option(min=0, help="Predictions per second; 0 posts as fast as possible")
    ] = 20.0,
    count: Annotated[int, typer.Option(min=0, help="Predictions to send; 0 runs until stopped")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Predictions per request")] = 50,
    train_size: Annotated[
        int, typer.Option(min=100, help="Stream records the classifier is trained on")
    ] = 5000,
    label_delay: Annotated[
        int, typer.Option(min=0, help="Predictions that pass before a label arrives")
    ] = 200,
    seed: int = 7,
    concept_drift_at: Annotated[
        int | None, typer.Option(help="Switch the Agrawal function at this prediction")
    ] = None,
    concept_drift_function: Annotated[int, typer.Option(min=0, max=9)] = 2,
    covariate_drift_at: Annotated[
        int | None, typer.Option(help="Shift salary and age from this prediction")
    ] = None,
    nulls_at: Annotated[int | None, typer.Option(help="Start sending nulls in --null-feature here")] = None,
    null_feature: str = "salary",
    null_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.5,
    latency_spike_at: Annotated[
        int | None, typer.Option(help="Multiply latencies from this prediction")
    ] = None,
    latency_factor: Annotated[float, typer.Option(min=1)] = 20.0,
    error_burst_at: Annotated[int | None, typer.Option(help="Start failing predictions here")] = None,
    error_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.3,
    prediction_collapse_at: Annotated[
        int | None, typer.Option(help="Answer --collapse-class to every request from here")
    ] = None,
    collapse_class: Annotated[int, typer.Option(min=0, max=1)] = 0,
    missing_feature_at: Annotated[
        int | None, typer.Option(help="Stop sending --missing-feature from here")
    ] = None,
    missing_feature: str = "car",
    traffic_drop_at: Annotated[
        int | None, typer.Option(help="Send --traffic-factor of the rate from here")
    ] = None,
    traffic_factor: Annotated[float, typer.Option(min=0.01, max=1)] = 0.1,
    pipeline_failure_at: Annotated[
        int | None, typer.Option(help="The feature pipeline fails every record from here")
    ] = None,
    business_decline_at: Annotated[
        int | None, typer.Option(help="Multiply business values by --business-factor from here")
    ] = None,
    business_factor: Annotated[float, typer.Option(min=0, max=1)] = 0.3,
    incident_length: Annotated[
        int, typer.Option(min=1, help="Predictions a latency or error incident lasts")
    ] = 2000,
    reference_rows: Annotated[
        int,
        typer.Option(
            min=0, help="Labelled rows held back from training and written as the model's file reference"
        ),
    ] = 5000,
    replace_reference: Annotated[
        bool, typer.Option(help="Overwrite an existing reference file (by default it is kept)")
    ] = False,
) -> None:
    """Train a classifier on river's Agrawal credit stream and post its predictions and labels.

    When the model's configured reference is a file that does not exist yet, a labelled slice of the
    stream that the classifier was not trained on is written there first, so drift compares
    production with known-good data from the first window. An existing file is kept (a second
    generator beside a running stack leaves its reference alone) unless --replace-reference."""
    from watchkeeper.config import FileReference
    from watchkeeper.demo import DemoTraffic, Injections, run_demo_traffic, write_reference

    injections = Injections(
        concept_drift_at=concept_drift_at,
        concept_drift_function=concept_drift_function,
        covariate_drift_at=covariate_drift_at,
        nulls_at=nulls_at,
        null_feature=null_feature,
        null_rate=null_rate,
        latency_spike_at=latency_spike_at,
        latency_factor=latency_factor,
        error_burst_at=error_burst_at,
        error_rate=error_rate,
        incident_length=incident_length,
        prediction_collapse_at=prediction_collapse_at,
        collapse_class=collapse_class,
        missing_feature_at=missing_feature_at,
        missing_feature=missing_feature,
        traffic_drop_at=traffic_drop_at,
        traffic_factor=traffic_factor,
        pipeline_failure_at=pipeline_failure_at,
        business_decline_at=business_decline_at,
        business_factor=business_factor,
    )
    configured = load_monitoring().model(model)
    reference = configured.reference if configured is not None else None
    held_back = reference_rows if isinstance(reference, FileReference) else 0
    traffic = DemoTraffic(
        model_name=model, train_size=train_size, seed=seed, injections=injections, reference_size=held_back
    )
    if held_back and write_reference(traffic.reference, reference.path, replace_reference):
        console.print(f"wrote {held_back} held-back labelled rows to {reference.path}")
    elif held_back:
        console.print(f"kept the existing reference {reference.path} (--replace-reference writes a new one)")
    sent = run_demo_traffic(
        traffic,
        url=url,
        rate=rate,
        count=count,
        batch_size=batch_size,
        label_delay=label_delay,
        token=state.settings.credentials.intake.bearer,
        console=console,
        pipeline=pipeline or None,
    )
    console.print(f"sent {sent.predictions} predictions and {sent.feedback} labels to {url}")


def TimeOption(help: str) -> Any:  # noqa: N802, A002 (used as typer.Option is)
    """A time option: ISO 8601 with `Z` or an offset, UTC when it has none, as one UTC `datetime`."""
    return typer.Option(parser=cli_time, metavar="TIME", help=help)


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(2)


@app.command("drift-report")
def drift_report(
    reference: Annotated[Path, typer.Option(help="Reference data, CSV or Parquet")],
    current: Annotated[Path, typer.Option(help="Current data, CSV or Parquet")],
    columns: Annotated[
        list[str] | None, typer.Option("--columns", help="Columns to test (default: all)")
    ] = None,
    method: Annotated[str | None, typer.Option(help="Evidently drift method for every column")] = None,
    threshold: Annotated[float | None, typer.Option(help="Drift threshold for every column")] = None,
    drift_share: Annotated[float, typer.Option(min=0, max=1)] = 0.5,
    html: Annotated[Path | None, typer.Option(help="Write Evidently's HTML report here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines")] = False,
) -> None:
    """Run evaluate-drift's logic on two files: per column drift score, method, threshold and verdict."""
    from dataclasses import replace

    from tasks.drift import compute_drift, infer_columns
    from tasks.logs import read_table

    try:
        reference_frame, current_frame = read_table(reference), read_table(current)
        wanted = [c for item in columns or [] for c in item.split(",") if c]
        specs = [
            replace(s, method=method, threshold=threshold) for s in infer_columns(reference_frame, wanted)
        ]
    except (OSError, ValueError, KeyError) as exc:
        raise _fail(str(exc).strip("'\"")) from exc
    result = compute_drift(reference_frame, current_frame, specs, drift_share)
    if html is not None and result.snapshot is not None:
        result.snapshot.save_html(str(html))
    if as_json:
        print(json.dumps(result.as_json(), indent=2))
        return
    table = Table("column", "method", "score", "threshold", "drifted")
    for c in result.columns:
        table.add_row(
            c.column,
            c.method,
            f"{c.score:.4g}",
            f"{c.threshold:.4g}",
            "[red]yes[/red]" if c.drifted else "no",
        )
    for name, why in result.skipped.items():
        table.add_row(name, "-", "-", "-", f"skipped: {why}")
    console.print(table)
    console.print(
        f"drifted share {result.share:.2f}; dataset drift: {'yes' if result.dataset_drift else 'no'}"
    )


def _parse_params(pairs: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _fail(f"--param {pair!r}: expected key=value")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _flows() -> dict[str, object]:
    from deployments.serve import FLOWS

    return FLOWS


@app.command("run")
def run_flow(
    flow_name: Annotated[str, typer.Argument(metavar="FLOW", help="Flow name, e.g. evaluate-drift")],
    param: Annotated[list[str] | None, typer.Option("--param", help="key=value (value may be JSON)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Run one flow now, in this process, recorded in Prefect like any run, and print its summary."""
    load_monitoring()
    flows = _flows()
    if flow_name not in flows:
        raise _fail(f"unknown flow {flow_name!r}: expected one of {', '.join(sorted(flows))}")
    params = _parse_params(param or [])
    from prefect.exceptions import ParameterTypeError

    try:
        with recorded_on_local_stack(state.settings):
            summary = flows[flow_name](**params)  # type: ignore[operator]
    except (ParameterTypeError, TypeError, ValueError) as exc:
        raise _fail(f"{flow_name}: {exc}") from exc
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        console.print_json(json.dumps(summary, default=str))


@app.command()
def backfill(
    model: Annotated[str, typer.Argument(help="Configured model name")],
    start: Annotated[
        datetime, TimeOption(help="Start of the range, ISO 8601 (UTC unless an offset is given)")
    ],
    end: Annotated[datetime, TimeOption(help="End of the range")],
    window: Annotated[str, typer.Option(help="Window length, e.g. 30m")] = "1h",
    step: Annotated[str, typer.Option(help="Distance between window starts, e.g. 30m")] = "1h",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Evaluate drift for every window in a range (the backfill-drift flow) with a progress bar."""
    import threading

    from rich.progress import Progress

    from flows.backfill_drift import backfill_drift, backfill_windows
    from watchkeeper.config import parse_duration

    config = load_monitoring()
    if config.model(model) is None:
        raise _fail(f"model {model!r} is not configured")
    try:
        windows = backfill_windows(start, end, parse_duration(window), parse_duration(step))
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            with recorded_on_local_stack(state.settings):
                outcome["summary"] = backfill_drift(
                    model=model, start=start, end=end, window=window, step=step
                )
        except Exception as exc:  # printed on the main thread once the progress bar is done
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    store = open_store()
    started = utcnow()
    with Progress(console=console, disable=as_json) as progress:
        bar = progress.add_task(f"drift backfill of {model}", total=len(windows))
        worker.start()
        while worker.is_alive():
            worker.join(timeout=1)
            progress.update(bar, completed=_windows_done(store, model, started))
        progress.update(bar, completed=_windows_done(store, model, started))
    if "summary" not in outcome:
        failure = outcome.get("error")
        errors.print(f"[red]error:[/red] the drift backfill failed: {failure}", highlight=False)
        raise typer.Exit(1)
    print(json.dumps(outcome["summary"], indent=2, default=str)) if as_json else console.print(
        outcome["summary"]
    )


def _windows_done(store: Store, model: str, since: datetime) -> int:
    from sqlalchemy import func, select

    from watchkeeper.store.schema import EvaluationResult

    with store.reading() as session:
        return (
            session.scalar(
                select(func.count()).where(
                    EvaluationResult.kind == "drift",
                    EvaluationResult.subject == model,
                    EvaluationResult.metric == "current_rows",
                    EvaluationResult.computed_at >= since,
                )
            )
            or 0
        )


class RcaDataset(StrEnum):
    petshop = "petshop"


class RcaSplit(StrEnum):
    train = "train"
    test = "test"
    all = "all"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_scores(title: str, rows: dict[str, dict[str, Any]]) -> None:
    table = Table(title, "issues", "top-1", "top-3", "specificity", "noissue windows")
    for name, row in rows.items():
        table.add_row(
            name,
            str(row["n"]),
            _score(row["top1"]),
            _score(row["top3"]),
            _score(row["specificity"]),
            str(row["specificity_windows"]),
        )
    console.print(table)


@app.command("rca-eval")
def rca_eval(
    dataset: Annotated[RcaDataset, typer.Argument(help="Dataset format")],
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="The dataset's folder of scenarios")],
    split: Annotated[RcaSplit, typer.Option(help="Issues to score")] = RcaSplit.train,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON")] = False,
    details: Annotated[
        bool, typer.Option("--details", help="Add every issue's ranked candidates and reasons to the JSON")
    ] = False,
) -> None:
    """Score the root-cause ranking on a labelled dataset: top-1 and top-3 recall, specificity.

    Each split is scored on its own (train and test are never pooled)."""
    from watchkeeper.petshop import DatasetError, evaluate

    splits = ("train", "test") if split is RcaSplit.all else (split.value,)
    try:
        result = evaluate(directory, splits)
    except DatasetError as exc:
        raise _fail(str(exc)) from exc
    summary: dict[str, Any] = {"dataset": dataset.value, "splits": list(splits)}
    if len(splits) == 1:
        summary["scenarios"] = result["splits"][splits[0]]["scenarios"]
    else:
        summary["by_split"] = {s: {"scenarios": r["scenarios"]} for s, r in result["splits"].items()}
    if details:
        summary["issues"] = result["issues"]
    if not as_json:
        for name, scored in result["splits"].items():
            _print_scores(f"scenario ({name})", scored["scenarios"])
            _print_scores(f"scenario/target metric ({name})", scored["targets"])
    print(json.dumps(summary))


@app.command()
def drill(
    faults: Annotated[str, typer.Option(help="Comma-separated fault ids (default: all)")] = "",
    seed: Annotated[int, typer.Option(help="Demo stream seed")] = 7,
    inject_after: Annotated[
        float, typer.Option(min=0, help="Seconds from the stack being healthy to the injections")
    ] = 120.0,
    rate: Annotated[float, typer.Option(min=5, max=100, help="Predictions per second per model")] = 10.0,
    clean_minutes: Annotated[
        float, typer.Option(min=1, help="Minutes the clean model runs without injection")
    ] = 30.0,
    home: Annotated[
        Path | None, typer.Option(help="Folder for the drill's stack (default: a new temp dir)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON")] = False,
) -> None:
    """Inject every failure class the demo knows, each on a model of its own, through a stack of its
    own (`watchkeeper up` on free ports), and report what fired, when, and what was decided."""
    from watchkeeper.drill import FAULTS, Drill, DrillOptions

    wanted = tuple(f for f in faults.split(",") if f) or tuple(FAULTS)
    try:
        options = DrillOptions(wanted, seed, inject_after, rate, clean_minutes)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    folder = home or Path(tempfile.mkdtemp(prefix="watchkeeper-drill-"))
    log = (lambda _m: None) if as_json else (lambda m: errors.print(m, highlight=False))
    log(f"drill home {folder}: {len(wanted)} faults and a clean model, {clean_minutes:g} clean minutes")
    ports = {
        name: free_port() for name in ("prefect", "service", "prometheus", "alertmanager", "notifications")
    }
    try:
        result = Drill(options, folder, log).run(ports)
    except RuntimeError as exc:
        raise _fail(str(exc)) from exc
    if not as_json:
        table = Table(
            "fault", "detected", "to webhook (s)", "to incident (s)", "first alerts", "root cause", "decision"
        )
        for fault, row in result["faults"].items():
            first = sorted(row["alerts"], key=lambda a: row["alerts"][a] or 0)[:2]
            table.add_row(
                fault,
                "yes" if row["detected"] else "NO",
                str(row["seconds_to_webhook"]),
                str(row["seconds_to_incident"]),
                ", ".join(first),
                str(row["root_cause"]),
                str(row["decision"]),
            )
        console.print(table)
        console.print(
            f"clean run: {result['clean']['false_alerts']} false alerts in {result['clean']['minutes']} min"
        )
    print(json.dumps(result))


class AlertFilter(StrEnum):
    firing = "firing"
    resolved = "resolved"


class IncidentFilter(StrEnum):
    open = "open"
    resolved = "resolved"


LimitOption = Annotated[int, typer.Option(min=1, max=1000, help="How many to show")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines")]


@app.command()
def alerts(
    status_filter: Annotated[AlertFilter | None, typer.Option("--status")] = None,
    limit: LimitOption = 50,
    as_json: JsonOption = False,
) -> None:
    """Stored alerts, newest first."""
    from watchkeeper.store.incidents import list_alerts

    rows = list_alerts(open_store(), status_filter.value if status_filter else None, limit).items
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("id", "alert", "status", "severity", "started", "subject", "correlated")
    for row in rows:
        labels = row["labels"]
        subject = labels.get("model_name") or labels.get("pipeline_name") or labels.get("service") or "-"
        table.add_row(
            str(row["id"]),
            row["alertname"],
            row["status"],
            row["severity"] or "-",
            row["starts_at"],
            subject,
            "yes" if row["correlated"] else "pending",
        )
    console.print(table)


@app.command()
def incidents(
    incident_id: Annotated[int | None, typer.Argument(metavar="[ID]", help="Show one incident whole")] = None,
    status_filter: Annotated[IncidentFilter | None, typer.Option("--status")] = None,
    limit: LimitOption = 50,
    as_json: JsonOption = False,
) -> None:
    """Incidents with their suggested root cause; with an ID, its members, ranking and timeline."""
    from watchkeeper.store.incidents import incident_detail, list_incidents

    store = open_store()
    if incident_id is not None:
        detail = incident_detail(store, incident_id)
        if detail is None:
            raise _fail(f"no incident {incident_id}")
        if as_json:
            print(json.dumps(detail, indent=2))
        else:
            _print_incident(detail)
        return
    rows = list_incidents(store, status_filter.value if status_filter else None, limit).items
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("id", "status", "severity", "title", "alerts", "root cause", "score", "last alert")
    for row in rows:
        cause = row["root_cause"] or {}
        table.add_row(
            str(row["id"]),
            row["status"],
            row["severity"] or "-",
            row["title"],
            str(row["alerts"]),
            cause.get("subject", "-"),
            f"{cause['score']:.2f}" if cause else "-",
            row["last_alert_at"],
        )
    console.print(table)


def _print_incident(detail: dict) -> None:
    console.print(
        f"[bold]incident {detail['id']}[/bold] {detail['title']} ({detail['status']})", highlight=False
    )
    members = Table("alert", "status", "started", "joined because", "confidence", title="members")
    for m in detail["members"]:
        members.add_row(m["alertname"], m["status"], m["starts_at"], m["detail"], f"{m['confidence']:.2f}")
    ranking = Table("root cause", "alert", "score", "why", title="root-cause ranking")
    for c in detail["ranking"]:
        ranking.add_row(c["subject"], c["alertname"], f"{c['score']:.2f}", "; ".join(c["reasons"]))
    timeline = Table("at", "event", "detail", title="timeline")
    for event in detail["timeline"]:
        timeline.add_row(event["at"], event["kind"], json.dumps(event["detail"]))
    for table in (members, ranking, timeline):
        console.print(table)


playbooks_app = typer.Typer(no_args_is_help=True, help="Remediation playbooks.")
app.add_typer(playbooks_app, name="playbooks")


def _alerts_in(payload: object) -> list[dict]:
    """An Alertmanager payload's alerts, or a single alert (`labels`, optionally `alertname`)."""
    if isinstance(payload, dict) and isinstance(payload.get("alerts"), list):
        return payload["alerts"]
    if isinstance(payload, dict) and isinstance(payload.get("labels"), dict):
        return [payload]
    raise _fail("expected an Alertmanager payload with 'alerts' or one alert with 'labels'")


@playbooks_app.command("test")
def playbooks_test(
    alert_file: Annotated[
        Path, typer.Argument(metavar="ALERT.json", help="Alertmanager payload or one alert")
    ],
    as_json: JsonOption = False,
) -> None:
    """Which playbook the alert selects and what each action would do and why, without acting."""
    from tasks.playbooks import AlertFacts, plan, select_playbook
    from tasks.remediation import load_guards

    config = load_monitoring()
    try:
        payload = json.loads(alert_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise _fail(f"{alert_file}: {exc}") from exc
    now = utcnow()
    with open_store().reading() as session:
        guards = load_guards(session, config, now)
    results = []
    for alert in _alerts_in(payload):
        labels = {str(k): str(v) for k, v in alert["labels"].items()}
        name = labels.get("alertname") or alert.get("alertname")
        if not name:
            raise _fail("an alert needs an alertname (in labels or at the top level)")
        facts = AlertFacts(name, alert.get("status", "firing"), labels, labels.get("severity"))
        playbook = select_playbook(config.remediation.playbooks, facts)
        actions = [a.as_json() for a in plan(playbook, facts, guards, now)] if playbook else []
        results.append(
            {
                "alertname": name,
                "status": facts.status,
                "playbook": playbook and playbook.name,
                "actions": actions,
            }
        )
    summary = (
        results[0]
        if len(results) == 1
        else {
            "alerts": results,
            "actions": [{"alertname": r["alertname"], **a} for r in results for a in r["actions"]],
        }
    )
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for result in results:
        console.print(
            f"[bold]{result['alertname']}[/bold] ({result['status']}): "
            f"playbook {result['playbook'] or 'none matches'}",
            highlight=False,
        )
        table = Table("action", "target", "decision", "reason")
        for action in result["actions"]:
            table.add_row(action["action"], action["target"], action["decision"], action["reason"])
        if result["actions"]:
            console.print(table)


class Switch(StrEnum):
    on = "on"
    off = "off"
    status = "status"


@app.command()
def remediation(state_: Annotated[Switch, typer.Argument(metavar="on|off|status")]) -> None:
    """The global kill switch for remediation, kept in the store (survives restarts, holds for replicas)."""
    from watchkeeper.store.actions import remediation_on, set_remediation

    store = open_store()
    if state_ is not Switch.status:
        set_remediation(store, state_ is Switch.on, f"cli:{getpass.getuser()}")
    with store.reading() as session:
        console.print(f"remediation is {'on' if remediation_on(session) else 'off'}")


ServiceOption = Annotated[
    str | None,
    typer.Option("--url", help="The Watchkeeper service (default: WATCHKEEPER_URL or http://127.0.0.1:8765)"),
]


def _answer(incident_id: int, approved: bool, comment: str, url: str | None) -> None:
    """Through the service, with the operator credential: the audit trail records that credential."""
    import httpx

    token = state.settings.credentials.operator.bearer
    running = Stack(state.settings).record("service")
    local = running.health_url.removesuffix("/healthz") if running and running.health_url else None
    base = (url or state.settings.url or local or "http://127.0.0.1:8765").rstrip("/")
    try:
        response = httpx.post(
            f"{base}/v1/incidents/{incident_id}/approval",
            json={"approved": approved, "comment": comment},
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise _fail(f"the service at {base} could not be reached: {exc}") from exc
    if response.status_code != 200:
        detail = response.json().get("detail", response.text) if response.content else response.reason_phrase
        raise _fail(f"incident {incident_id}: {response.status_code}: {detail}")
    body = response.json()
    resumed = len(body["resumed_runs"])
    console.print(
        f"incident {incident_id}: {body['verdict']} ({len(body['actions'])} action(s), by {body['by']}; "
        f"{resumed} paused run(s) resumed)"
    )
    for run_id, error in body["not_resumed"].items():
        console.print(f"run {run_id} could not be resumed ({error}); the reconciler will act on the decision")
    if approved and not body["resumed_runs"]:
        console.print(
            "no run is paused for it: reconcile-remediation runs the approved actions (within ~2 min)"
        )


@app.command()
def approve(
    incident_id: Annotated[int, typer.Argument(metavar="INCIDENT")],
    comment: Annotated[str, typer.Option(help="Kept in the audit trail")] = "",
    url: ServiceOption = None,
) -> None:
    """Approve the actions an incident's playbook is waiting for; its paused run resumes and acts."""
    _answer(incident_id, True, comment, url)


@app.command()
def reject(
    incident_id: Annotated[int, typer.Argument(metavar="INCIDENT")],
    comment: Annotated[str, typer.Option(help="Kept in the audit trail")] = "",
    url: ServiceOption = None,
) -> None:
    """Reject them: nothing runs."""
    _answer(incident_id, False, comment, url)


@app.command()
def actions(
    incident_id: Annotated[int | None, typer.Option("--incident", help="Only this incident's")] = None,
    limit: LimitOption = 50,
    as_json: JsonOption = False,
) -> None:
    """The remediation audit trail, newest first: every decision with its reason and result."""
    from watchkeeper.store.actions import list_actions

    rows = list_actions(open_store(), incident_id, limit).items
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("id", "incident", "playbook", "action", "target", "decision", "status", "reason")
    for row in rows:
        table.add_row(
            str(row["id"]),
            str(row["incident_id"]),
            row["playbook"],
            row["action"],
            row["target"],
            row["decision"],
            row["status"],
            row["reason"],
        )
    console.print(table)


@app.command("model-report")
def model_report_command(
    model: Annotated[str, typer.Argument(help="Configured model name")],
    start: Annotated[
        datetime | None, TimeOption(help="Start of the period, ISO 8601 (UTC unless an offset is given)")
    ] = None,
    end: Annotated[datetime | None, TimeOption(help="End of the period (default: now)")] = None,
    html: Annotated[Path | None, typer.Option(help="Also write the HTML report to this file")] = None,
    deliver: Annotated[
        bool, typer.Option(help="Send it to reports.deliver_to (each target once per period)")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The model report for a period (the model-report flow, run here and recorded in Prefect): kept
    in the store, listed by GET /v1/reports; the default period is reports.period up to now."""
    from flows.model_report import model_report
    from watchkeeper.store.reports import get_report, report_html

    config = load_monitoring()
    if config.model(model) is None:
        raise _fail(f"model {model!r} is not configured")
    end = end or utcnow().replace(microsecond=0)
    start = start or end - config.reports.period
    if end <= start:
        raise _fail(f"--end ({end.isoformat()}) must be after --start ({start.isoformat()})")
    store = open_store()
    with recorded_on_local_stack(state.settings):
        report_id = model_report(model=model, start=start, end=end, deliver=deliver)[model]
    listed = get_report(store, report_id)
    assert listed is not None
    if html is not None:
        html.write_text(report_html(store, report_id) or "")
    if as_json:
        print(json.dumps(listed, indent=2, default=str))
        return
    console.print(f"report {report_id} of {model}, {start.isoformat()} to {end.isoformat()}")
    from tasks.report_render import headline

    table = Table("figure", "value")
    for name, value in headline(listed["summary"]):
        table.add_row(name, value)
    console.print(table)
    if html is not None:
        console.print(f"HTML: {html}")


@app.command()
def report(
    hours: Annotated[int, typer.Option(min=1, help="Period to cover")] = 24,
    as_json: JsonOption = False,
) -> None:
    """The automation report: success rate, breakdown by action, recent actions."""
    from watchkeeper.store.actions import automation_report

    summary = automation_report(open_store(), hours)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    rate = "-" if summary["success_rate"] is None else f"{summary['success_rate']:.0%}"
    console.print(
        f"last {hours} h: {summary['decisions']} decisions, {summary['executed']} executed, "
        f"{summary['succeeded']} succeeded ({rate})"
    )
    kinds = sorted({kind for counts in summary["by_action"].values() for kind in counts})
    table = Table("action", *kinds)
    for action, counts in summary["by_action"].items():
        table.add_row(action, *(str(counts.get(kind, 0)) for kind in kinds))
    console.print(table)
