"""Remediation: the kill switch, playbook tests, approvals and the audit trail."""

from __future__ import annotations

import getpass
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from watchkeeper.cli.app import (
    JsonOption,
    LimitOption,
    app,
    console,
    fail,
    load_monitoring,
    open_store,
    state,
)
from watchkeeper.local.stack import Stack
from watchkeeper.times import utcnow

playbooks_app = typer.Typer(no_args_is_help=True, help="Remediation playbooks.")
app.add_typer(playbooks_app, name="playbooks")


def _alerts_in(payload: object) -> list[dict]:
    """An Alertmanager payload's alerts, or a single alert (`labels`, optionally `alertname`)."""
    if isinstance(payload, dict) and isinstance(payload.get("alerts"), list):
        return payload["alerts"]
    if isinstance(payload, dict) and isinstance(payload.get("labels"), dict):
        return [payload]
    raise fail("expected an Alertmanager payload with 'alerts' or one alert with 'labels'")


@playbooks_app.command("test")
def playbooks_test(
    alert_file: Annotated[
        Path, typer.Argument(metavar="ALERT.json", help="Alertmanager payload or one alert")
    ],
    as_json: JsonOption = False,
) -> None:
    """Which playbook the alert selects and what each action would do and why, without acting."""
    from watchkeeper.remediation.guards import load_guards
    from watchkeeper.remediation.playbooks import AlertFacts, plan, select_playbook

    config = load_monitoring()
    try:
        payload = json.loads(alert_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise fail(f"{alert_file}: {exc}") from exc
    now = utcnow()
    with open_store().reading() as session:
        guards = load_guards(session, config, now)
    results = []
    for alert in _alerts_in(payload):
        labels = {str(k): str(v) for k, v in alert["labels"].items()}
        name = labels.get("alertname") or alert.get("alertname")
        if not name:
            raise fail("an alert needs an alertname (in labels or at the top level)")
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


def post_to_service(path: str, body: dict[str, Any], url: str | None, what: str) -> dict[str, Any]:
    """POST to the service as you: your own token (WATCHKEEPER_TOKEN), else the operator
    credential; the timeline and the audit trail record whom it names."""
    import httpx

    settings = state.settings
    token = settings.token.get_secret_value() if settings.token else settings.credentials.operator.bearer
    running = Stack(settings).record("service")
    local = running.health_url.removesuffix("/healthz") if running and running.health_url else None
    base = (url or settings.url or local or "http://127.0.0.1:8765").rstrip("/")
    try:
        response = httpx.post(
            f"{base}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise fail(f"the service at {base} could not be reached: {exc}") from exc
    if response.status_code != 200:
        problem = response.json() if response.content else {}
        detail = problem.get("error") or problem.get("detail") or response.reason_phrase
        raise fail(f"{what}: {response.status_code}: {detail}")
    return response.json()


def _answer(incident_id: int, approved: bool, comment: str, url: str | None) -> None:
    """Through the service, with your credential: the audit trail records whom it names."""
    body = post_to_service(
        f"/v1/incidents/{incident_id}/approval",
        {"approved": approved, "comment": comment},
        url,
        f"incident {incident_id}",
    )
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
