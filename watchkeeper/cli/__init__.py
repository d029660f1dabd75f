"""The `watchkeeper` command line: one Typer app (`app.py`) on which each module registers its group
of commands. Commands parse, call the library and print; the logic they run lives in the library,
where tests reach it without the CLI."""

from watchkeeper.cli import evaluation, incidents, monitoring, remediation, stack  # noqa: F401 (registers)
from watchkeeper.cli.app import app

__all__ = ["app"]
