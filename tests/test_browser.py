"""The incident page used as a person on call would use it, in a real browser: Playwright driving
Debian's Chromium (package chromium, which `make test` installs). A missing browser fails here."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tasks.incidents import correlate_pending_alerts
from tests.conftest import ALICE_TOKEN, BOB_PASSWORD, LiveService
from tests.realstack import wait_until
from tests.test_on_call import timeline
from tests.test_remediation import remediation_config, secrets  # noqa: F401 - autouse
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.remediation.decisions import handle_incident
from watchkeeper.remediation.reconciler import escalate_unacknowledged, reconcile
from watchkeeper.settings import Credentials
from watchkeeper.store import Store
from watchkeeper.store.alerts import WebhookNotification, store_notification
from watchkeeper.store.schema import Incident
from watchkeeper.times import utcnow

# As root, Chromium needs --no-sandbox; the rest keep it off this machine's closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed: `make test` installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def drill_collapse(store: Store, config: WatchkeeperConfig, alertmanager: str) -> int:
    """The drill's accuracy collapse as Alertmanager holds it and its webhook tells Watchkeeper: a
    critical accuracy alert and the collapse, one of whose labels is markup a sender could send."""
    started = utcnow().isoformat()
    alerts = [
        {
            "labels": {
                "alertname": name,
                "model_name": "credit_approval",
                "severity": "critical",
                "team": "ml_engineering",
                "note": '<img src=x onerror="window.pwned=1">',
            },
            "annotations": {
                "summary": f"{name} on credit_approval",
                "runbook_url": "javascript:window.pwned=2",
            },
            "startsAt": started,
        }
        for name in ("ModelAccuracyCritical", "ModelAccuracyCollapse")
    ]
    httpx.post(f"{alertmanager}/api/v2/alerts", json=alerts).raise_for_status()

    def both() -> list[dict] | None:
        listed = httpx.get(f"{alertmanager}/api/v2/alerts").json()
        return listed if len(listed) == 2 else None

    held = wait_until(both, "Alertmanager to hold both alerts")
    body = {
        "version": "4",
        "groupKey": '{}:{alertname="ModelAccuracyCritical"}',
        "status": "firing",
        "receiver": "watchkeeper",
        "alerts": [
            {
                "status": "firing",
                "labels": a["labels"],
                "annotations": a["annotations"],
                "startsAt": a["startsAt"],
                "fingerprint": a["fingerprint"],
            }
            for a in held
        ],
    }
    store_notification(store, WebhookNotification.model_validate(body), body)
    [incident_id] = correlate_pending_alerts(store, config).opened
    assert handle_incident(store, config, incident_id, None).awaiting
    return incident_id


def on_call_config(tmp_path: Path, standins: tuple, people_config: WatchkeeperConfig) -> WatchkeeperConfig:
    """The stand-ins' playbooks; the accuracy one waits for approval and escalates to the webhook."""
    config = remediation_config(tmp_path, *standins)
    changes = {"require_approval": True, "escalation_time": timedelta(minutes=5), "escalate_to": "hook"}
    playbooks = [
        p.model_copy(update=changes) if p.name == "accuracy-critical" else p
        for p in config.remediation.playbooks
    ]
    remediation = config.remediation.model_copy(update={"playbooks": playbooks})
    return config.model_copy(update={"remediation": remediation, "users": people_config.users})


def sign_in(page: Page, url: str, name: str, secret: str) -> None:
    page.goto(f"{url}/ui/incidents")
    expect(page).to_have_url(f"{url}/ui/login?next=/ui/incidents")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password or token").fill(secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{url}/ui/incidents")


class EvilSite:
    """Another origin on loopback whose page posts a form to the incident page as soon as it loads."""

    def __init__(self, target: str) -> None:
        form = (
            f'<form id="f" method="post" action="{target}"><input name="reason" value="pwned"></form>'
            '<script>document.getElementById("f").submit()</script>'
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(form)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def test_a_person_on_call_handles_the_drill_s_accuracy_collapse_in_the_browser(
    browser: Browser,
    alertmanager: str,
    store: Store,
    standins: tuple,
    people_config: WatchkeeperConfig,
    tmp_path: Path,
) -> None:
    _kube, http, _smtp = standins
    config = on_call_config(tmp_path, standins, people_config)
    incident_id = drill_collapse(store, config, alertmanager)
    credentials = Credentials.shared("shared-0123456789")
    with LiveService(config, store, credentials=credentials, alertmanager_url=alertmanager) as site:
        incident_url = f"{site.url}/ui/incidents/{incident_id}"
        # A viewer sees the incident, its buttons disabled; a forced press is refused.
        viewer = browser.new_page()
        sign_in(viewer, site.url, "bob", BOB_PASSWORD)
        viewer.goto(incident_url)
        expect(viewer.get_by_role("button", name="Approve")).to_be_disabled()
        viewer.evaluate("document.querySelector('form[action$=\"/approve\"]').submit()")
        expect(viewer.get_by_role("alert")).to_contain_text("bob is a viewer")
        viewer.goto(incident_url)  # and keeps watching it
        # The operator opens it from the list; the markup in its labels is text, never run.
        page = browser.new_page()
        sign_in(page, site.url, "", ALICE_TOKEN)
        expect(page.locator("#rows")).to_contain_text("ModelAccuracyCritical")
        page.screenshot(path=str(tmp_path / "incidents.png"), full_page=True)
        page.get_by_role("link", name=f"{incident_id}", exact=True).click()
        expect(page).to_have_url(incident_url)
        expect(page.locator("#live")).to_contain_text('<img src=x onerror="window.pwned=1">')
        assert page.evaluate("window.pwned") is None
        assert page.locator('a[href^="javascript:"]').count() == 0
        page.screenshot(path=str(tmp_path / "incident.png"), full_page=True)
        # Approve the waiting actions, then see them run on the page.
        page.get_by_placeholder("comment").fill("fall back now")
        page.get_by_role("button", name="Approve").click()
        expect(page.get_by_role("status")).to_have_text("Done: approved.")
        expect(page.locator("#live")).to_contain_text("approved")
        reconcile(store, config, "test-reconciler", now=utcnow() + timedelta(minutes=2))
        page.reload()
        expect(page.locator("#live")).to_contain_text("succeeded")
        # Acknowledge: the escalation that was due is not sent.
        page.get_by_role("button", name="Acknowledge").click()
        expect(page.get_by_role("status")).to_have_text("Done: acknowledged.")
        assert escalate_unacknowledged(store, config, utcnow() + timedelta(hours=1)) == {}
        assert http.to("/hook") == []
        # Mute: Alertmanager holds a silence for each of its alerts, made by alice.
        page.get_by_role("button", name="Mute until resolved").click()
        expect(page.get_by_role("status")).to_have_text("Done: muted until resolved.")
        silences = [
            s for s in httpx.get(f"{alertmanager}/api/v2/silences").json() if s["status"]["state"] == "active"
        ]
        assert len(silences) == 2 and {s["createdBy"] for s in silences} == {"alice"}
        # The viewer's page shows what alice did without being reloaded (it refreshes every 10 s).
        expect(viewer.locator("#live")).to_contain_text("acknowledged by alice", timeout=15_000)
        expect(viewer.locator("#live .state")).to_have_text("muted")
        # A page of another origin posting the resolve form: refused, nothing resolved.
        evil = EvilSite(f"{incident_url}/resolve")
        try:
            attacked = browser.new_page()
            attacked.context.add_cookies(page.context.cookies())  # the same signed-in person
            attacked.goto(evil.url)
            attacked.wait_for_url(lambda url: url.startswith(site.url))
            expect(attacked.locator("body")).to_contain_text(
                "Sign in" if "login" in attacked.url else "Refused"
            )
        finally:
            evil.stop()
        with store.reading() as session:
            assert session.get(Incident, incident_id).status == "open"
        kinds = [k for k, _ in timeline(store, incident_id)]
        assert {"approved", "acknowledged", "muted"} <= set(kinds) and "resolved_by_hand" not in kinds
