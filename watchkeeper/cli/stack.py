"""The local stack and its processes: db, serve, executor, up, down, status, notification-sink,
demo-traffic."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from watchkeeper.cli.app import (
    PortOption,
    app,
    console,
    db_app,
    errors,
    fail,
    load_monitoring,
    open_store,
    state,
)
from watchkeeper.local.ha import HaStack, remember_mode, stack_started_last
from watchkeeper.local.stack import Ports, Stack
from watchkeeper.log_lines import log_json_lines
from watchkeeper.runtime.host import healthy


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

    from watchkeeper.service.app import service_for, serving_process

    settings = state.settings
    credentials = settings.credentials
    if not loopback(host) and not credentials.complete and not allow_unauthenticated:
        missing = [
            r.variable
            for r in (credentials.intake, credentials.alertmanager, credentials.operator)
            if not r.required
        ]
        raise fail(
            f"refusing to listen on {host} without credentials for every role: set {', '.join(missing)} "
            "(or WATCHKEEPER_API_TOKEN for all), or pass --allow-unauthenticated"
        )
    config, store = load_monitoring(), open_store()
    if config.intake.processes == 1:
        serving_process()
        uvicorn.run(
            service_for(settings, config, store),
            host=host,
            port=port,
            log_level="info",
            log_config=None,  # the process logs JSON lines (serving_process)
            access_log=False,
        )
        return
    store.dispose()
    log_json_lines("service")
    uvicorn.run(
        "watchkeeper.service.app:service_from_environment",
        factory=True,
        workers=config.intake.processes,
        host=host,
        port=port,
        log_level="info",
        log_config=None,
        access_log=False,
    )


@app.command()
def executor() -> None:
    """Run the warm executor in the foreground: serves the deployments, starts the runs the intake
    owes, and executes every run in place (see watchkeeper/runtime/executor.py). Without PREFECT_API_URL it
    starts a Prefect server of its own on loopback and stops it when it stops."""
    from watchkeeper.runtime.process import run_executor

    run_executor(state.settings, load_monitoring(), open_store())


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
    node_exporter_port: int,
    demo_traffic: bool = False,
    ha: bool = False,
) -> Stack:
    ports = Ports(
        prefect_port, service_port, prometheus_port, alertmanager_port, notifications_port, node_exporter_port
    )
    kind = HaStack if ha else Stack
    return kind(state.settings, ports, demo_traffic=demo_traffic)


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
    node_exporter_port: PortOption = 9100,
    ha: Annotated[
        bool,
        typer.Option(
            "--ha",
            help="Two of every process (PostgreSQL, Redis, HAProxy, two Prefect API servers, services, "
            "executors, Alertmanagers, Prometheus servers): see docs/operations.md",
        ),
    ] = False,
) -> None:
    """Start whatever of the local stack is not already running, on loopback."""
    load_monitoring()
    running = stack_started_last(state.settings)
    if isinstance(running, HaStack) != ha and any(
        (record := running.record(name)) is not None and record.alive() for name in running.all_names()
    ):
        errors.print("[red]error:[/red] the other kind of stack is running: 'watchkeeper down' first")
        raise typer.Exit(1)
    stack = _stack(
        prefect_port,
        service_port,
        prometheus_port,
        alertmanager_port,
        notifications_port,
        node_exporter_port,
        demo_traffic,
        ha,
    )
    remember_mode(state.settings, ha)
    if not ha:  # the HA topology's store is its PostgreSQL, upgraded once it runs
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
    if isinstance(stack, HaStack):
        console.print(f"{'Store':<18} WATCHKEEPER_DATABASE_URL={stack.store_url}")
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
    from watchkeeper.local.notification_sink import NotificationSink

    log_json_lines("notification-sink")
    NotificationSink(port, log).serve_forever()


@app.command()
def down() -> None:
    """Stop exactly the processes 'watchkeeper up' started."""
    stack = stack_started_last(state.settings)
    stack.down(_report)


@app.command()
def status() -> None:
    """Show which components run and whether they answer their health checks."""
    stack = stack_started_last(state.settings)
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
        str | None,
        typer.Option(
            help="Configured pipeline to report feature-pipeline runs for ('' for none); the model's "
            "dataset's pipeline when unset"
        ),
    ] = None,
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
    stale_features_at: Annotated[
        int | None, typer.Option(help="The feature views stop being materialised from here")
    ] = None,
    feature_store_slow_at: Annotated[
        int | None, typer.Option(help="Feature lookups take --feature-store-factor times longer from here")
    ] = None,
    feature_store_factor: Annotated[float, typer.Option(min=1)] = 30.0,
    regression_bias_at: Annotated[
        int | None, typer.Option(help="A regression model: shift every prediction from here")
    ] = None,
    regression_bias: float = 4.0,
    ranking_collapse_at: Annotated[
        int | None, typer.Option(help="A ranking model: rank by a stale, shuffled table from here")
    ] = None,
    popularity_shift_at: Annotated[
        int | None, typer.Option(help="A ranking model: recommend the most popular items to all from here")
    ] = None,
    embedding_drift_at: Annotated[
        int | None, typer.Option(help="A model with a query_embedding: a new encoder from here")
    ] = None,
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
    day_minutes: Annotated[
        float,
        typer.Option(
            min=0, help="A daily cycle in the traffic, a day compressed to this many minutes (0: none)"
        ),
    ] = 0.0,
    day_amplitude: Annotated[
        float, typer.Option(min=0, max=0.95, help="How far the daily cycle moves the rate from its mean")
    ] = 0.3,
) -> None:
    """Train the model's demo on its stream and post its predictions and labels: by the configured
    model's task, a classifier on river's Agrawal credit stream, a regressor on river's Friedman
    stream, or a recommender simulation (see watchkeeper/local/demo_kinds.py).

    When the model's configured reference is a file that does not exist yet, a labelled slice of the
    stream that the classifier was not trained on is written there first, so drift compares
    production with known-good data from the first window. An existing file is kept (a second
    generator beside a running stack leaves its reference alone) unless --replace-reference."""
    from watchkeeper.config import FileReference
    from watchkeeper.intake.kinds import BINARY
    from watchkeeper.local.demo import (
        DailyCycle,
        DemoTraffic,
        Injections,
        demo_feature_store,
        run_demo_traffic,
        write_reference,
    )
    from watchkeeper.local.demo_kinds import KindInjections, demo_of

    log_json_lines("demo-traffic")

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
        stale_features_at=stale_features_at,
        feature_store_slow_at=feature_store_slow_at,
        feature_store_factor=feature_store_factor,
    )
    monitoring = load_monitoring()
    configured = monitoring.model(model)
    reference = configured.reference if configured is not None else None
    held_back = reference_rows if isinstance(reference, FileReference) else 0
    task = configured.task if configured is not None else BINARY
    if task == BINARY:
        traffic: Any = DemoTraffic(
            model_name=model,
            train_size=train_size,
            seed=seed,
            injections=injections,
            reference_size=held_back,
        )
    else:
        kind_injections = KindInjections(
            regression_bias_at=regression_bias_at,
            regression_bias=regression_bias,
            ranking_collapse_at=ranking_collapse_at,
            popularity_shift_at=popularity_shift_at,
            embedding_drift_at=embedding_drift_at,
            latency_spike_at=latency_spike_at,
            latency_factor=latency_factor,
        )
        traffic = demo_of(task)(
            model_name=model,
            train_size=train_size,
            seed=seed,
            injections=kind_injections,
            reference_size=held_back,
        )
    if pipeline is None:
        datasets = monitoring.datasets_of(model)
        pipeline = datasets[0].pipeline or "" if datasets else ""
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
        pipeline=pipeline or None,
        feature_store=demo_feature_store(monitoring, model, seed, injections) if task == BINARY else None,
        daily_cycle=DailyCycle(day_minutes * 60, day_amplitude) if day_minutes else None,
    )
    console.print(
        f"sent {sent.predictions} predictions, {sent.feedback} labels, {sent.pipeline_runs} "
        f"pipeline runs and {sent.feature_lookups} feature lookups to {url}"
    )
