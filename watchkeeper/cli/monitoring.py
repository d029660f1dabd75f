"""Monitoring on demand: drift-report, run, backfill, model-report and the automation report."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from watchkeeper.cli.app import (
    JsonOption,
    TimeOption,
    app,
    console,
    errors,
    fail,
    load_monitoring,
    open_store,
    state,
)
from watchkeeper.local.stack import Stack, recorded_on_local_stack
from watchkeeper.times import utcnow


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
        raise fail(str(exc).strip("'\"")) from exc
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
            raise fail(f"--param {pair!r}: expected key=value")
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
        raise fail(f"unknown flow {flow_name!r}: expected one of {', '.join(sorted(flows))}")
    params = _parse_params(param or [])
    from prefect.exceptions import ParameterTypeError

    try:
        with recorded_on_local_stack(state.settings):
            summary = flows[flow_name](**params)  # type: ignore[operator]
    except (ParameterTypeError, TypeError, ValueError) as exc:
        raise fail(f"{flow_name}: {exc}") from exc
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
    from tasks.drift import drift_windows_since
    from watchkeeper.config import parse_duration

    config = load_monitoring()
    if config.model(model) is None:
        raise fail(f"model {model!r} is not configured")
    try:
        windows = backfill_windows(start, end, parse_duration(window), parse_duration(step))
    except ValueError as exc:
        raise fail(str(exc)) from exc
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
            progress.update(bar, completed=drift_windows_since(store, model, started))
        progress.update(bar, completed=drift_windows_since(store, model, started))
    if "summary" not in outcome:
        failure = outcome.get("error")
        errors.print(f"[red]error:[/red] the drift backfill failed: {failure}", highlight=False)
        raise typer.Exit(1)
    print(json.dumps(outcome["summary"], indent=2, default=str)) if as_json else console.print(
        outcome["summary"]
    )


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
        raise fail(f"model {model!r} is not configured")
    end = end or utcnow().replace(microsecond=0)
    start = start or end - config.reports.period
    if end <= start:
        raise fail(f"--end ({end.isoformat()}) must be after --start ({start.isoformat()})")
    store = open_store()
    # The bands come from WATCHKEEPER_PROMETHEUS_URL, else from the local stack's Prometheus.
    running = Stack(state.settings).record("prometheus")
    local = running.health_url.removesuffix("/-/ready") if running and running.health_url else None
    with recorded_on_local_stack(state.settings):
        report_id = model_report(
            model=model,
            start=start,
            end=end,
            deliver=deliver,
            prometheus_url=state.settings.prometheus_url or local,
        )[model]
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
