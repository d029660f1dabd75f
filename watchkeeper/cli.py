"""The `watchkeeper` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from watchkeeper.config import ConfigError, WatchkeeperConfig
from watchkeeper.settings import Settings
from watchkeeper.stack import Ports, Stack, healthy
from watchkeeper.store import Store

app = typer.Typer(
    no_args_is_help=True, help="Watchkeeper: watches AI models in production and acts on what it sees."
)
db_app = typer.Typer(no_args_is_help=True, help="The store's schema.")
app.add_typer(db_app, name="db")
console = Console()
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
    state.settings = Settings(config=config) if config else Settings()


def load_monitoring() -> WatchkeeperConfig:
    try:
        return state.settings.monitoring
    except ConfigError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
        raise typer.Exit(2) from exc


def open_store() -> Store:
    return state.settings.open_store()


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
) -> None:
    """Run the HTTP service (intake, health, /metrics) in the foreground."""
    import uvicorn

    from watchkeeper.service.app import create_app

    config = load_monitoring()
    store = open_store()
    store.upgrade()
    uvicorn.run(
        create_app(config, store, api_token=state.settings.api_token_value),
        host=host,
        port=port,
        log_level="info",
    )


PortOption = Annotated[int, typer.Option(min=1, max=65535)]


def _stack(
    prefect_port: int,
    service_port: int,
    prometheus_port: int,
    alertmanager_port: int,
    demo_traffic: bool = False,
) -> Stack:
    ports = Ports(prefect_port, service_port, prometheus_port, alertmanager_port)
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
) -> None:
    """Start whatever of the local stack is not already running, on loopback."""
    load_monitoring()
    stack = _stack(prefect_port, service_port, prometheus_port, alertmanager_port, demo_traffic)
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
    incident_length: Annotated[
        int, typer.Option(min=1, help="Predictions a latency or error incident lasts")
    ] = 2000,
) -> None:
    """Train a classifier on river's Agrawal credit stream and post its predictions and labels."""
    from watchkeeper.demo import DemoTraffic, Injections, run_demo_traffic

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
    )
    traffic = DemoTraffic(model_name=model, train_size=train_size, seed=seed, injections=injections)
    sent = run_demo_traffic(
        traffic,
        url=url,
        rate=rate,
        count=count,
        batch_size=batch_size,
        label_delay=label_delay,
        token=state.settings.api_token_value,
        console=console,
    )
    console.print(f"sent {sent.predictions} predictions and {sent.feedback} labels to {url}")
