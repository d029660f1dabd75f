"""The incident pages over real HTTP: sign-in and its cookie, what a viewer and an operator may
press, cross-site forms refused, and hostile alert labels shown as text."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tasks.incidents import correlate_pending_alerts
from tests.conftest import ALICE_TOKEN, BOB_PASSWORD, LiveService
from tests.test_incidents import alert, notify
from tests.test_on_call import opened_incident, timeline
from tests.test_remediation import remediation_config, secrets  # noqa: F401 - autouse
from tests.test_remediation_state import quality_incident
from watchkeeper.config import UILinks, User, WatchkeeperConfig
from watchkeeper.remediation.decisions import handle_incident
from watchkeeper.service.people import People, Person, hash_password
from watchkeeper.service.ui import Sessions, incident_links
from watchkeeper.settings import Credentials, Role
from watchkeeper.store import Store
from watchkeeper.store.actions import list_actions
from watchkeeper.store.schema import Incident

CSRF = re.compile(r'name="csrf" value="([0-9a-f]{32})"')


@pytest.fixture
def site(people_config: WatchkeeperConfig, store: Store) -> Iterator[LiveService]:
    with LiveService(people_config, store, credentials=Credentials.shared("shared-0123456789")) as live:
        yield live


def signed_in(url: str, name: str, secret: str) -> httpx.Client:
    client = httpx.Client(base_url=url)
    answer = client.post("/ui/login", data={"name": name, "password": secret, "next": "/ui/incidents"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/incidents", answer.text
    return client


def csrf_of(client: httpx.Client, incident_id: int) -> str:
    return CSRF.search(client.get(f"/ui/incidents/{incident_id}").text).group(1)


def test_sign_in_sets_a_session_cookie_that_cannot_be_read_by_scripts_nor_sent_cross_site(
    site: LiveService, people_config: WatchkeeperConfig, store: Store
) -> None:
    incident_id = opened_incident(store, people_config)
    anonymous = httpx.get(f"{site.url}/ui/incidents/{incident_id}")
    assert (
        anonymous.status_code == 303
        and anonymous.headers["location"] == f"/ui/login?next=/ui/incidents/{incident_id}"
    )
    wrong = httpx.post(f"{site.url}/ui/login", data={"name": "bob", "password": "nope"})
    assert wrong.status_code == 401 and "Unknown name, password or token" in wrong.text
    answer = httpx.post(f"{site.url}/ui/login", data={"name": "bob", "password": BOB_PASSWORD})
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=28800" in cookie
    assert "secure" not in cookie  # plain HTTP on loopback; over TLS it is Secure
    tls = httpx.post(
        f"{site.url}/ui/login",
        data={"name": "bob", "password": BOB_PASSWORD},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert "secure" in tls.headers["set-cookie"].lower()
    bob = signed_in(site.url, "bob", BOB_PASSWORD)
    listing = bob.get("/ui/incidents")
    assert listing.status_code == 200 and "ModelInferenceLatencyHigh" in listing.text
    assert (
        "bob (viewer)" in listing.text and "script-src 'self'" in listing.headers["content-security-policy"]
    )
    rows = bob.get("/ui/incidents", params={"part": "rows"})
    assert "<html" not in rows.text and f'href="/ui/incidents/{incident_id}"' in rows.text
    forged = httpx.get(f"{site.url}/ui/incidents", cookies={"watchkeeper_session": "e30.deadbeef"})
    assert forged.status_code == 303


def test_a_viewer_sees_the_buttons_disabled_and_a_press_is_refused(
    site: LiveService, people_config: WatchkeeperConfig, store: Store
) -> None:
    incident_id = opened_incident(store, people_config)
    bob = signed_in(site.url, "bob", BOB_PASSWORD)
    page = bob.get(f"/ui/incidents/{incident_id}").text
    assert "<button disabled>Acknowledge</button>" in page
    pressed = bob.post(f"/ui/incidents/{incident_id}/acknowledge", data={"csrf": csrf_of(bob, incident_id)})
    assert pressed.status_code == 403 and "bob is a viewer" in pressed.text
    with store.reading() as session:
        assert session.get(Incident, incident_id).acknowledged_by is None


def test_an_operator_acknowledges_and_notes_and_a_cross_site_form_is_refused(
    site: LiveService, people_config: WatchkeeperConfig, store: Store
) -> None:
    incident_id = opened_incident(store, people_config)
    alice = signed_in(site.url, "", ALICE_TOKEN)  # a token, without a name
    token = csrf_of(alice, incident_id)
    missing = alice.post(f"/ui/incidents/{incident_id}/acknowledge", data={})
    cross_site = alice.post(
        f"/ui/incidents/{incident_id}/acknowledge",
        data={"csrf": token},
        headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    )
    assert (
        missing.status_code == cross_site.status_code == 403 and "did not come from this page" in missing.text
    )
    done = alice.post(f"/ui/incidents/{incident_id}/acknowledge", data={"csrf": token})
    assert (
        done.status_code == 303
        and done.headers["location"] == f"/ui/incidents/{incident_id}?done=acknowledged"
    )
    again = alice.post(f"/ui/incidents/{incident_id}/acknowledge", data={"csrf": token})
    assert again.status_code == 409 and "already acknowledged by alice" in again.text
    alice.post(f"/ui/incidents/{incident_id}/note", data={"csrf": token, "text": "<b>rolled back</b>"})
    live = alice.get(f"/ui/incidents/{incident_id}", params={"part": "live"}).text
    assert "acknowledged by alice" in live and "&lt;b&gt;rolled back&lt;/b&gt;" in live
    assert [k for k, _ in timeline(store, incident_id)][-2:] == ["acknowledged", "note"]


def test_hostile_labels_and_annotations_are_shown_as_text_never_run(
    service: LiveService, example_config: WatchkeeperConfig, store: Store
) -> None:
    script = "<script>alert(1)</script>"
    hostile = alert(
        "ModelErrorBurst",
        timedelta(0),
        model_name="credit_approval",
        team=script,
        fp="hostile",
    )
    hostile["annotations"] = {"summary": script, "runbook_url": "javascript:alert(1)"}
    notify(store, hostile)
    [incident_id] = correlate_pending_alerts(store, example_config).opened
    page = httpx.get(f"{service.url}/ui/incidents/{incident_id}").text  # no credentials: loopback
    assert script not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "javascript:" not in page
    assert "anonymous (loopback) (operator)" in page


def test_an_approval_pressed_on_the_page_settles_the_waiting_action(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    config = remediation_config(tmp_path, *standins)
    incident_id = quality_incident(store, config)
    handle_incident(store, config, incident_id, None)
    with LiveService(config, store) as live:
        client = httpx.Client(base_url=live.url)
        page = client.get(f"/ui/incidents/{incident_id}").text
        assert ">Approve</button>" in page and "awaiting_approval" in page
        pressed = client.post(
            f"/ui/incidents/{incident_id}/approve",
            data={"csrf": csrf_of(client, incident_id), "comment": "go"},
        )
        assert pressed.status_code == 303 and pressed.headers["location"].endswith("done=approved")
    [action] = list_actions(store, incident_id).items
    assert (action["status"], action["settled_by"]) == ("approved", "anonymous (loopback)")


def test_the_incident_links_where_to_look_next_and_only_over_http() -> None:
    detail = {
        "members": [{"labels": {"model_name": "credit_approval"}}, {"labels": {"pipeline_name": "etl"}}],
        "trace_url": "javascript:alert(1)",
    }
    actions = [{"flow_run_id": "0193a0f2-aaaa"}, {"flow_run_id": None}, {"flow_run_id": "0193a0f2-aaaa"}]
    ui = UILinks(prefect_url="http://127.0.0.1:4200", grafana_url="https://grafana.example")
    links = incident_links(detail, actions, ui, {"credit_approval": 7}.get, "http://127.0.0.1:8000")
    assert links == [
        ("Prefect run 0193a0f2", "http://127.0.0.1:4200/runs/flow-run/0193a0f2-aaaa"),
        ("credit_approval report", "/ui/reports/7"),
        (
            "credit_approval in Grafana",
            "https://grafana.example/d/watchkeeper-model-performance?var-model=credit_approval",
        ),
        ("credit_approval drift (Evidently)", "http://127.0.0.1:8000"),
    ]


def test_a_form_s_text_is_checked_as_the_api_checks_it(
    service: LiveService, example_config: WatchkeeperConfig, store: Store
) -> None:
    incident_id = opened_incident(store, example_config)
    client = httpx.Client(base_url=service.url)
    token = csrf_of(client, incident_id)
    for text, says in (
        ("a\x00b", "text: text may not contain NUL"),
        ("x" * 4001, "at most 4000"),
        ("  ", "expected"),
    ):
        refused = client.post(f"/ui/incidents/{incident_id}/note", data={"csrf": token, "text": text})
        assert refused.status_code == 422 and says in refused.text
    assert "note" not in [k for k, _ in timeline(store, incident_id)]


def test_a_session_follows_the_configuration_as_it_is_now() -> None:
    secret = hash_password(BOB_PASSWORD)
    as_viewer, as_operator = (
        People([User(name="bob", role=role, password_hash=secret)], Role("operator", None, "X"))
        for role in ("viewer", "operator")
    )
    cookie = Sessions(b"k" * 32, as_viewer).issue(Person("bob", "viewer"))
    assert Sessions(b"k" * 32, as_viewer).person(cookie) == Person("bob", "viewer")
    assert Sessions(b"k" * 32, as_operator).person(cookie) == Person("bob", "operator")  # promoted
    nobody = People([User(name="ann", role="viewer", password_hash=secret)], Role("operator", None, "X"))
    assert Sessions(b"k" * 32, nobody).person(cookie) is None  # removed
    assert Sessions(b"j" * 32, as_viewer).person(cookie) is None  # another key: a forgery
