"""Incidents in the browser, served by the service: a list at /ui/incidents, an incident at
/ui/incidents/{id}, sign-in at /ui/login. Server-rendered (Jinja2, every value escaped); a small
script refreshes the page's live part without a full reload.

Sign-in sets a signed session cookie (HttpOnly, SameSite=Strict, Secure over TLS) that expires;
its key lives in the store, so every replica accepts it. Every form carries a CSRF token bound to
the session, and a cross-site request (`Sec-Fetch-Site: cross-site`, or an `Origin` other than the
page's own) is refused whatever it carries. A viewer sees the buttons disabled, and a press is 403.
"""

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from watchkeeper.config import UILinks, WatchkeeperConfig
from watchkeeper.intake.bodies import text_problem
from watchkeeper.remediation import silences
from watchkeeper.service.on_call import answer_and_resume
from watchkeeper.service.people import ANONYMOUS, People, Person
from watchkeeper.store import Store, lifecycle
from watchkeeper.store.actions import list_actions
from watchkeeper.store.bulk import insert_rows
from watchkeeper.store.incidents import incident_detail, list_incidents, with_trace_links
from watchkeeper.store.reports import list_reports, report_html
from watchkeeper.store.samples import Sampling
from watchkeeper.store.schema import ControlFlag, IncidentStatus
from watchkeeper.times import utcnow

COOKIE = "watchkeeper_session"
SESSION_SECONDS = 8 * 3600
SECRET_FLAG = "ui_session_key"
MAX_FORM_BYTES = 16_384
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
DONE = {
    "acknowledge": "acknowledged",
    "note": "noted",
    "resolve": "resolved",
    "tick": "ticked",
    "mute": "muted until resolved",
    "approve": "approved",
    "reject": "rejected",
}
# Refreshes each element with `data-refresh` from its URL every 10 s: the page's live part without a
# full reload (a form being typed in is outside it, and stays).
REFRESH_JS = """
setInterval(async () => {
  for (const element of document.querySelectorAll("[data-refresh]")) {
    try {
      const answer = await fetch(element.dataset.refresh, {credentials: "same-origin"});
      if (answer.ok) element.innerHTML = await answer.text();
    } catch (error) { /* offline for a moment: the next round tries again */ }
  }
}, 10000);
"""
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"], default=True),
)


def web_url(url: object) -> str | None:
    """A link only to http(s): an alert's annotation is the sender's text, and `javascript:` runs."""
    text = str(url or "")
    return text if text.startswith(("http://", "https://", "/")) and not text.startswith("//") else None


TEMPLATES.filters["web_url"] = web_url


def incident_links(
    detail: dict[str, Any],
    actions: list[dict[str, Any]],
    ui: UILinks,
    latest_report: Callable[[str], int | None],
    evidently_url: str | None,
) -> list[tuple[str, str]]:
    """Where to look next, from the configured base URLs: the Prefect runs that handled it, the
    models' latest report and Evidently project, Grafana, and its trace."""
    links = []
    runs = dict.fromkeys(a["flow_run_id"] for a in actions if a["flow_run_id"])
    if ui.prefect_url:
        links += [(f"Prefect run {run[:8]}", f"{ui.prefect_url}/runs/flow-run/{run}") for run in runs]
    models = sorted({m["labels"].get("model_name") for m in detail["members"]} - {None})
    for model in models:
        report_id = latest_report(model)
        if report_id is not None:
            links.append((f"{model} report", f"/ui/reports/{report_id}"))
        if ui.grafana_url:
            links.append(
                (
                    f"{model} in Grafana",
                    f"{ui.grafana_url}/d/watchkeeper-model-performance?var-model={quote(model)}",
                )
            )
        if evidently_url:
            links.append((f"{model} drift (Evidently)", evidently_url))
    if detail.get("trace_url"):
        links.append(("trace", detail["trace_url"]))
    return [(label, url) for label, url in links if web_url(url)]


def session_key(store: Store) -> bytes:
    """The key sessions are signed with, made once and shared by every replica through the store."""
    row = {
        "name": SECRET_FLAG,
        "value": secrets.token_hex(32),
        "changed_by": "watchkeeper",
        "changed_at": utcnow(),
    }
    with store.writing() as session:
        insert_rows(session, ControlFlag.__table__, [row], ("name",))
        return bytes.fromhex(session.get(ControlFlag, SECRET_FLAG).value)


@dataclass(frozen=True)
class Sessions:
    key: bytes
    people: People

    def _sign(self, payload: str) -> str:
        return hmac.new(self.key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, person: Person) -> str:
        body = {"name": person.name, "expires": int(time.time()) + SESSION_SECONDS}
        payload = base64.urlsafe_b64encode(json.dumps(body).encode()).decode()
        return f"{payload}.{self._sign(payload)}"

    def person(self, cookie: str | None) -> Person | None:
        """Who the cookie names, if its signature holds and it has not expired."""
        if not self.people.required:
            return ANONYMOUS
        payload, _, signature = (cookie or "").partition(".")
        if not payload or not hmac.compare_digest(signature, self._sign(payload)):
            return None
        body = json.loads(base64.urlsafe_b64decode(payload))
        if body["expires"] < time.time():
            return None
        return self.people.now(body["name"])

    def csrf(self, cookie: str | None) -> str:
        """The token a form of this session carries (or of anonymous use, without sign-in)."""
        return self._sign(f"csrf:{cookie or 'anonymous'}")[:32]


def _cross_site(request: Request) -> bool:
    if request.headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = request.headers.get("origin")
    return origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}"


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, detail={"error": f"the form is larger than {MAX_FORM_BYTES} bytes"})
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise HTTPException(400, detail={"error": "the form is not UTF-8"}) from exc
    return {k: v[0] for k, v in fields.items()}


def _age(opened: str | None) -> str:
    if opened is None:
        return "-"
    seconds = (utcnow() - datetime.fromisoformat(opened)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _state(row: dict[str, Any]) -> str:
    if row["status"] == "resolved":
        return "resolved"
    if row.get("muted_by"):
        return "muted"
    if row["acknowledged_by"]:
        return "acknowledged"
    if row["snoozed_until"] and datetime.fromisoformat(row["snoozed_until"]) > utcnow():
        return "snoozed"
    return "open"


def ui_router(
    store: Store,
    config: WatchkeeperConfig,
    people: People,
    alertmanager_url: str | None,
    resume_run: Callable[[str, dict[str, Any]], None],
) -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False)
    sessions: list[Sessions] = []

    def the_sessions() -> Sessions:
        if not sessions:  # the key is read from the store on first use, not at import
            sessions.append(Sessions(session_key(store), people))
        return sessions[0]

    def page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = TEMPLATES.get_template(name).render(**values)
        headers = {
            "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'unsafe-inline'; "
            "frame-ancestors 'none'; form-action 'self'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store",
        }
        return HTMLResponse(html, status, headers=headers)

    def signed_in(request: Request) -> Person | None:
        return the_sessions().person(request.cookies.get(COOKIE))

    def to_login(request: Request) -> RedirectResponse:
        return RedirectResponse(f"/ui/login?next={quote(request.url.path)}", 303)

    @router.get("/refresh.js")
    def refresh_script() -> Response:
        return Response(REFRESH_JS, media_type="text/javascript", headers={"Cache-Control": "max-age=300"})

    @router.get("/reports/{report_id}")
    def report(request: Request, report_id: int) -> Response:
        """A model report, for a signed-in person (the API's needs a token)."""
        if signed_in(request) is None:
            return to_login(request)
        html = report_html(store, report_id)
        if html is None:
            return page("message.html", 404, message=f"No report {report_id}", person=signed_in(request))
        return HTMLResponse(html, headers={"X-Content-Type-Options": "nosniff"})

    @router.get("/login")
    def login_form(request: Request, next: str = "/ui/incidents") -> Response:  # noqa: A002
        return page("login.html", next=next if next.startswith("/ui/") else "/ui/incidents", error=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        if _cross_site(request):
            return page("login.html", 403, next="/ui/incidents", error="refused: a cross-site sign-in")
        form = await _form(request)
        target = form.get("next", "/ui/incidents")
        target = target if target.startswith("/ui/") else "/ui/incidents"
        name, secret = form.get("name", ""), form.get("password", "")
        person = people.by_token(secret) if not name else people.by_password(name, secret)
        if person is None:
            return page("login.html", 401, next=target, error="Unknown name, password or token")
        response = RedirectResponse(target, 303)
        response.set_cookie(
            COOKIE,
            the_sessions().issue(person),
            max_age=SESSION_SECONDS,
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https",
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        response = RedirectResponse("/ui/login", 303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    def latest_report(model: str) -> int | None:
        newest = list_reports(store, model, 1).items
        return newest[0]["id"] if newest else None

    def incidents_rows() -> list[dict[str, Any]]:
        """Every open incident (up to 500), however long ago it last alerted, then the 50 resolved
        most recently."""
        rows = [
            *list_incidents(store, IncidentStatus.OPEN, 500).items,
            *list_incidents(store, IncidentStatus.RESOLVED, 50).items,
        ]
        for row in rows:
            row["state"], row["age"] = _state(row), _age(row["opened_at"])
        return sorted(
            rows,
            key=lambda r: (r["status"] != "open", SEVERITY_ORDER.get(r["severity"] or "", 3), -r["id"]),
        )

    @router.get("/incidents")
    def incidents(request: Request, part: str | None = None) -> Response:
        person = signed_in(request)
        if person is None:
            return to_login(request)
        template = "incident_rows.html" if part == "rows" else "incidents.html"
        return page(template, person=person, rows=incidents_rows(), people_required=people.required)

    def detail_values(incident_id: int, request: Request, person: Person) -> dict[str, Any] | None:
        detail = incident_detail(store, incident_id, Sampling.of(config), config.manual_actions)
        if detail is None:
            return None
        detail = with_trace_links(detail, config.traces)
        detail["state"] = _state(detail)
        actions = list_actions(store, incident_id, 200).items
        links = incident_links(detail, actions, config.ui, latest_report, config.reports.evidently_ui_url)
        return {
            "incident": detail,
            "actions": actions,
            "awaiting": any(a["status"] == "awaiting_approval" for a in actions),
            "links": links,
            "person": person,
            "can_act": person.can_act,
            "csrf": the_sessions().csrf(request.cookies.get(COOKIE)),
            "people_required": people.required,
        }

    @router.get("/incidents/{incident_id}")
    def incident(
        request: Request, incident_id: int, part: str | None = None, done: str | None = None
    ) -> Response:
        person = signed_in(request)
        if person is None:
            return to_login(request)
        values = detail_values(incident_id, request, person)
        if values is None:
            return page("message.html", 404, message=f"No incident {incident_id}", person=person)
        template = "incident_live.html" if part == "live" else "incident.html"
        return page(template, done=done, error=None, **values)

    def perform(action: str, incident_id: int, form: dict[str, str], who: str) -> str:
        """The press: one of the on-call transitions, or the approval; what the page then says."""
        moves: dict[str, Callable[[], Any]] = {
            "acknowledge": lambda: lifecycle.acknowledge(store, incident_id, who),
            "note": lambda: lifecycle.note(store, incident_id, _text(form, "text", 4000), who),
            "resolve": lambda: lifecycle.resolve(store, incident_id, _text(form, "reason", 2000), who),
            "tick": lambda: lifecycle.tick(
                store, incident_id, _text(form, "step", 500), who, config.manual_actions
            ),
            "mute": lambda: silences.mute(
                store, config, alertmanager_url or _no_alertmanager(), incident_id, who
            ),
            "approve": lambda: answer_and_resume(store, incident_id, True, _comment(form), who, resume_run),
            "reject": lambda: answer_and_resume(store, incident_id, False, _comment(form), who, resume_run),
        }
        if action not in moves:
            raise lifecycle.LifecycleError(404, f"no action {action!r}")
        moves[action]()
        return DONE[action]

    @router.post("/incidents/{incident_id}/{action}")
    async def press(request: Request, incident_id: int, action: str) -> Response:
        cookie = request.cookies.get(COOKIE)
        person = signed_in(request)
        if person is None:
            return to_login(request)
        form = await _form(request)
        sent = form.get("csrf", "")
        if _cross_site(request) or not hmac.compare_digest(sent, the_sessions().csrf(cookie)):
            return page(
                "message.html", 403, message="Refused: this form did not come from this page", person=person
            )
        if not person.can_act:
            return page("message.html", 403, message=person.refusal, person=person)
        try:
            outcome = perform(action, incident_id, form, person.name)
        except (lifecycle.LifecycleError, silences.AlertmanagerUnavailable) as exc:
            values = detail_values(incident_id, request, person)
            if values is None:
                return page("message.html", 404, message=f"No incident {incident_id}", person=person)
            status = exc.status if isinstance(exc, lifecycle.LifecycleError) else 503
            message = exc.message if isinstance(exc, lifecycle.LifecycleError) else str(exc)
            return page("incident.html", status, done=None, error=message, **values)
        return RedirectResponse(f"/ui/incidents/{incident_id}?done={quote(outcome)}", 303)

    return router


def _text(form: dict[str, str], field: str, limit: int, required: bool = True) -> str:
    """A form's text field as the API's bodies take it: present, bounded and storable (or 422)."""
    value = form.get(field, "").strip()
    problem = text_problem(value)
    if required and not value:
        problem = "expected some text"
    elif len(value) > limit:
        problem = f"expected at most {limit} characters"
    if problem:
        raise lifecycle.LifecycleError(422, f"{field}: {problem}")
    return value


def _comment(form: dict[str, str]) -> str:
    return _text(form, "comment", 2000, required=False)


def _no_alertmanager() -> str:
    raise lifecycle.LifecycleError(409, "no Alertmanager is configured (WATCHKEEPER_ALERTMANAGER_URL)")
