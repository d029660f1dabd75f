"""Alerts and incidents as operators read them."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from watchkeeper.cli.app import JsonOption, LimitOption, app, console, fail, load_monitoring, open_store
from watchkeeper.store.schema import AlertStatus, IncidentStatus


@app.command()
def alerts(
    status_filter: Annotated[AlertStatus | None, typer.Option("--status")] = None,
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
    status_filter: Annotated[IncidentStatus | None, typer.Option("--status")] = None,
    limit: LimitOption = 50,
    as_json: JsonOption = False,
) -> None:
    """Incidents with their suggested root cause; with an ID, its members, ranking and timeline."""
    from watchkeeper.store.incidents import incident_detail, list_incidents, with_trace_links
    from watchkeeper.store.samples import Sampling

    store = open_store()
    if incident_id is not None:
        config = load_monitoring()
        detail = incident_detail(store, incident_id, Sampling.of(config))
        if detail is None:
            raise fail(f"no incident {incident_id}")
        detail = with_trace_links(detail, config.traces)
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
    examples = Table(
        "model", "requests", "trace", "request id", "at", "latency (s)", title="example requests"
    )
    for model, by_kind in detail["example_requests"].items():
        for kind, requests in by_kind.items():
            for r in requests:
                latency = "-" if r["latency_seconds"] is None else f"{r['latency_seconds']:.3f}"
                trace = r["url"] or r["trace_id"]
                examples.add_row(model, kind, trace, r["request_id"], r["at"], latency)
    for table in (members, ranking, timeline, examples):
        console.print(table)
    if detail["trace_id"]:
        console.print(f"trace {detail['trace_url'] or detail['trace_id']}", highlight=False)
