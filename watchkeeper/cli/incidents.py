"""Alerts and incidents as operators read them."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from watchkeeper.cli.app import JsonOption, LimitOption, app, console, fail, load_monitoring, open_store
from watchkeeper.cli.remediation import ServiceOption, post_to_service
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
        detail = incident_detail(store, incident_id, Sampling.of(config), config.manual_actions)
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
    checklist = Table("step", "done by", "at", title="checklist")
    for step in detail["checklist"]:
        checklist.add_row(step["step"], step["done_by"] or "-", step["done_at"] or "-")
    on_call = [
        f"acknowledged by {detail['acknowledged_by']}" if detail["acknowledged_by"] else "not acknowledged",
        f"assigned to {detail['assignee']}" if detail["assignee"] else "unassigned",
    ]
    if detail["resolved_by"]:
        on_call.append(f"resolved by {detail['resolved_by']}")
    console.print("; ".join(on_call), highlight=False)
    for table in (members, ranking, timeline, checklist, examples):
        if table.row_count or table is not checklist:
            console.print(table)
    if detail["trace_id"]:
        console.print(f"trace {detail['trace_url'] or detail['trace_id']}", highlight=False)


IncidentArgument = Annotated[int, typer.Argument(metavar="INCIDENT")]


def _on_call(incident_id: int, action: str, body: dict, url: str | None) -> None:
    done = post_to_service(f"/v1/incidents/{incident_id}/{action}", body, url, f"incident {incident_id}")
    shown = ", ".join(f"{k} {v}" for k, v in done.items() if k not in ("incident", "event"))
    console.print(f"incident {incident_id}: {done['event']} ({shown})", highlight=False)


@app.command()
def ack(incident_id: IncidentArgument, url: ServiceOption = None) -> None:
    """Acknowledge: you have it; Watchkeeper's own repeat pages and escalations for it stop."""
    _on_call(incident_id, "acknowledge", {}, url)


@app.command()
def assign(
    incident_id: IncidentArgument,
    assignee: Annotated[str, typer.Argument(help="A configured user's name")],
    url: ServiceOption = None,
) -> None:
    """Say who owns the incident."""
    _on_call(incident_id, "assign", {"assignee": assignee}, url)


@app.command()
def note(
    incident_id: IncidentArgument,
    text: Annotated[str, typer.Argument(help="The note, for the next shift")],
    url: ServiceOption = None,
) -> None:
    """Leave a note on the incident's timeline."""
    _on_call(incident_id, "notes", {"text": text}, url)


@app.command()
def snooze(
    incident_id: IncidentArgument,
    duration: Annotated[str, typer.Argument(help="How long: 30m, 2h (1m to 7d)")],
    url: ServiceOption = None,
) -> None:
    """Hold Watchkeeper's own repeat pages and escalations for the incident this long."""
    _on_call(incident_id, "snooze", {"duration": duration}, url)


@app.command()
def mute(incident_id: IncidentArgument, url: ServiceOption = None) -> None:
    """Silence the incident's alerts in Alertmanager until it resolves (Watchkeeper expires the
    silences then)."""
    _on_call(incident_id, "mute", {}, url)


@app.command()
def resolve(
    incident_id: IncidentArgument,
    reason: Annotated[str, typer.Option(help="Why it is over: kept on the timeline")],
    url: ServiceOption = None,
) -> None:
    """Resolve the incident by hand; actions awaiting approval are rejected, and an alert that
    fires again opens a new incident that follows this one."""
    _on_call(incident_id, "resolve", {"reason": reason}, url)


@app.command()
def tick(
    incident_id: IncidentArgument,
    step: Annotated[str, typer.Argument(help="The checklist step done, as the playbook words it")],
    url: ServiceOption = None,
) -> None:
    """Tick a step of the incident's manual checklist."""
    _on_call(incident_id, "checklist", {"step": step}, url)


users_app = typer.Typer(no_args_is_help=True, help="The people who read and act on incidents.")
app.add_typer(users_app, name="users")


@users_app.command("hash-password")
def hash_password(
    password: Annotated[
        str | None, typer.Option(help="The password (asked for without echo, on stderr, when not given)")
    ] = None,
) -> None:
    """Print a password's salted hash for a user's `password_hash` in the configuration."""
    from watchkeeper.service.people import hash_password as salted_hash

    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    if len(password) < 12:
        raise fail("expected a password of at least 12 characters")
    print(salted_hash(password))
