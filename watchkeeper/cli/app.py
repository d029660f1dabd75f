"""The one Typer app every command group registers on, and what the groups share: the settings
from the global options, the console, failures as one message, common options."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from watchkeeper.config import ConfigError, WatchkeeperConfig
from watchkeeper.settings import Settings
from watchkeeper.store import Store
from watchkeeper.times import cli_time

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


PortOption = Annotated[int, typer.Option(min=1, max=65535)]


def TimeOption(help: str) -> Any:  # noqa: N802 - named and called as typer.Option is
    """A time option: ISO 8601 with `Z` or an offset, UTC when it has none, as one UTC `datetime`."""
    return typer.Option(parser=cli_time, metavar="TIME", help=help)


def fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(2)


LimitOption = Annotated[int, typer.Option(min=1, max=1000, help="How many to show")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines")]
