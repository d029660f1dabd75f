"""The people on call: their own credentials and roles, and what they do to an incident (acknowledge,
assign, note, snooze, resolve by hand), each a compare-and-set recorded on the timeline."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tasks.incidents import correlate_pending_alerts
from tests.conftest import ALICE_TOKEN, BOB_PASSWORD, LiveService
from tests.realstack import wait_until
from tests.test_incidents import T0, alert, notify
from tests.test_remediation import remediation_config, secrets  # noqa: F401 - autouse
from tests.test_remediation_state import quality_incident
from watchkeeper.cli import app
from watchkeeper.config import WatchkeeperConfig
from watchkeeper.remediation.decisions import handle_incident
from watchkeeper.remediation.reconciler import escalate_unacknowledged
from watchkeeper.remediation.silences import comment_of, create_silences, keep_mutes
from watchkeeper.service.people import hash_password, password_matches
from watchkeeper.settings import Credentials
from watchkeeper.store import Store, lifecycle
from watchkeeper.store.actions import answer_approval
from watchkeeper.store.alerts import WebhookNotification, store_notification
from watchkeeper.store.incidents import incident_detail
from watchkeeper.store.samples import Sampling
from watchkeeper.store.schema import Incident, IncidentEvent
from watchkeeper.times import utcnow


def opened_incident(store: Store, config: WatchkeeperConfig, fp: str = "lat") -> int:
    notify(store, alert("ModelInferenceLatencyHigh", timedelta(0), model_name="credit_approval", fp=fp))
    return correlate_pending_alerts(store, config).opened[0]


def timeline(store: Store, incident_id: int) -> list[tuple[str, dict]]:
    with store.reading() as session:
        events = session.query(IncidentEvent).filter_by(incident_id=incident_id).order_by(IncidentEvent.id)
        return [(e.kind, e.detail) for e in events]


def test_a_password_is_kept_salted_and_checked_in_constant_time() -> None:
    first, second = hash_password(BOB_PASSWORD), hash_password(BOB_PASSWORD)
    assert first != second and first.startswith("scrypt$16384$8$1$")
    assert password_matches(BOB_PASSWORD, first) and password_matches(BOB_PASSWORD, second)
    assert not password_matches(BOB_PASSWORD + " ", first)


@pytest.fixture
def people_service(people_config: WatchkeeperConfig, store: Store) -> Iterator[LiveService]:
    with LiveService(people_config, store, credentials=Credentials.shared("shared-0123456789")) as live:
        yield live


def test_people_sign_in_as_themselves_and_a_viewer_reads_but_cannot_act(
    people_service: LiveService, people_config: WatchkeeperConfig, store: Store
) -> None:
    incident_id = opened_incident(store, people_config)
    url = f"{people_service.url}/v1/incidents/{incident_id}"
    bob, alice = httpx.BasicAuth("bob", BOB_PASSWORD), {"Authorization": f"Bearer {ALICE_TOKEN}"}
    assert httpx.get(url, auth=bob).status_code == 200
    refused = httpx.post(f"{url}/acknowledge", auth=bob)
    assert (
        refused.status_code == 403
        and refused.json()["error"] == "bob is a viewer: acting needs the operator role"
    )
    assert httpx.get(url, auth=httpx.BasicAuth("bob", "wrong")).status_code == 401
    assert httpx.post(f"{url}/acknowledge").status_code == 401
    acknowledged = httpx.post(f"{url}/acknowledge", headers=alice)
    assert acknowledged.status_code == 200 and acknowledged.json()["by"] == "alice"
    shared = httpx.post(
        f"{url}/notes", json={"text": "paged twice"}, headers={"Authorization": "Bearer shared-0123456789"}
    )
    assert shared.json()["by"] == "operator (WATCHKEEPER_API_TOKEN)"  # the earlier releases' credential
    detail = httpx.get(url, headers=alice).json()
    assert (detail["acknowledged_by"], detail["status"]) == ("alice", "open")
    assert timeline(store, incident_id)[-2:] == [
        ("acknowledged", {"by": "alice"}),
        ("note", {"text": "paged twice", "by": "operator (WATCHKEEPER_API_TOKEN)"}),
    ]


def test_without_any_credential_the_timeline_says_anonymous_loopback(
    service: LiveService, example_config: WatchkeeperConfig, store: Store
) -> None:
    incident_id = opened_incident(store, example_config)
    done = httpx.post(f"{service.url}/v1/incidents/{incident_id}/acknowledge")
    assert done.json() == {"incident": incident_id, "event": "acknowledged", "by": "anonymous (loopback)"}


def test_each_transition_answers_what_stands_in_its_way(
    people_service: LiveService, people_config: WatchkeeperConfig, store: Store
) -> None:
    incident_id = opened_incident(store, people_config)
    post = lambda action, **body: httpx.post(  # noqa: E731
        f"{people_service.url}/v1/incidents/{incident_id}/{action}",
        json=body or None,
        headers={"Authorization": f"Bearer {ALICE_TOKEN}"},
    )
    assert post("acknowledge").status_code == 200
    again = post("acknowledge")
    assert again.status_code == 409 and "already acknowledged by alice" in again.json()["error"]
    unknown = post("assign", assignee="carol")
    assert unknown.status_code == 422 and unknown.json()["field"] == "body.assignee"
    assert "expected one of alice, bob" in unknown.json()["error"]
    assert post("assign", assignee="bob").json()["assignee"] == "bob"
    too_long = post("snooze", duration="8d")
    assert too_long.status_code == 422 and too_long.json()["field"] == "body.duration"
    assert post("snooze", duration="30m").status_code == 200
    assert post("resolve").status_code == 422  # a reason is required
    resolved = post("resolve", reason="rolled back the feature pipeline")
    assert resolved.status_code == 200 and resolved.json()["rejected_actions"] == []
    late = post("assign", assignee="alice")
    assert late.status_code == 409 and "is resolved by alice" in late.json()["error"]
    assert post("notes", text="post-mortem on Monday").status_code == 200  # notes still go
    missing = httpx.post(
        f"{people_service.url}/v1/incidents/999999/acknowledge",
        headers={"Authorization": f"Bearer {ALICE_TOKEN}"},
    )
    assert missing.status_code == 404
    with store.reading() as session:
        row = session.get(Incident, incident_id)
        assert (row.status, row.resolved_by, row.assignee) == ("resolved", "alice", "bob")
        assert row.snoozed_until is not None


def race(*calls: Callable[[], object]) -> list[object]:
    """Run the calls at once; each one's result or exception."""
    barrier, results = threading.Barrier(len(calls)), [None] * len(calls)

    def run(index: int, call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            results[index] = call()
        except Exception as exc:  # noqa: BLE001 - the race's loser is the point
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_people_acknowledging_at_once_one_wins_and_the_other_is_told_who(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    for round_ in range(5):
        incident_id = opened_incident(store, example_config, fp=f"lat{round_}")
        results = race(
            *(lambda who=who, i=incident_id: lifecycle.acknowledge(store, i, who) for who in ("ann", "ben"))
        )
        won = [r for r in results if isinstance(r, lifecycle.Transition)]
        lost = [r for r in results if isinstance(r, lifecycle.LifecycleError)]
        assert len(won) == 1 and len(lost) == 1, results
        assert lost[0].status == 409 and f"already acknowledged by {won[0].detail['by']}" in lost[0].message
        assert [k for k, _ in timeline(store, incident_id)].count("acknowledged") == 1
        lifecycle.resolve(store, incident_id, "next round", "ann")  # the next alert opens a new one


def test_an_approval_racing_a_manual_resolve_settles_the_waiting_actions_once(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    """Whichever settles first, each waiting action is approved or rejected, never both (the
    playbook's cooldown allows one waiting decision per test)."""
    config = remediation_config(tmp_path, *standins)
    incident_id = quality_incident(store, config)
    waiting = [r.id for r in handle_incident(store, config, incident_id, None).awaiting]
    assert waiting
    approval, resolution = race(
        lambda: answer_approval(store, incident_id, True, "go", "ann"),
        lambda: lifecycle.resolve(store, incident_id, "false alarm", "ben"),
    )
    assert isinstance(resolution, lifecycle.Transition)  # resolving never waits on approvals
    approved = approval.rows  # type: ignore[union-attr]
    rejected = resolution.detail["rejected_actions"]
    assert sorted(approved + rejected) == sorted(waiting) and not set(approved) & set(rejected)


def test_an_alert_firing_again_after_a_manual_resolve_opens_a_new_incident_that_follows(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    first = opened_incident(store, example_config)
    lifecycle.resolve(store, first, "known issue, fixed upstream", "ann")
    again = alert("ModelInferenceLatencyHigh", timedelta(minutes=2), model_name="credit_approval", fp="lat")
    notify(store, again)
    outcome = correlate_pending_alerts(store, example_config)
    assert outcome.reopened == [] and len(outcome.opened) == 1
    with store.reading() as session:
        second = session.get(Incident, outcome.opened[0])
        assert (second.status, second.follows_incident_id) == ("open", first)
        assert session.get(Incident, first).status == "resolved"


def test_the_cli_acts_through_the_service_as_the_token_it_holds(
    people_service: LiveService,
    people_config: WatchkeeperConfig,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    incident_id = opened_incident(store, people_config)
    monkeypatch.setenv("WATCHKEEPER_TOKEN", ALICE_TOKEN)
    runner = CliRunner()
    url = ["--url", people_service.url]
    snoozed = runner.invoke(app, ["snooze", str(incident_id), "2h", *url])
    assert snoozed.exit_code == 0, snoozed.output
    assert f"incident {incident_id}: snoozed" in snoozed.output and "by alice" in snoozed.output
    assert runner.invoke(app, ["ack", str(incident_id), *url]).exit_code == 0
    twice = runner.invoke(app, ["ack", str(incident_id), *url])
    assert twice.exit_code == 2 and "409" in twice.output and "already acknowledged by alice" in twice.output
    monkeypatch.setenv("WATCHKEEPER_TOKEN", "not-a-token-0123456")
    refused = runner.invoke(app, ["note", str(incident_id), "hello", *url])
    assert refused.exit_code == 2 and "401" in refused.output


def on_call_config(tmp_path: Path, standins: tuple) -> WatchkeeperConfig:
    """The stand-ins' remediation config; its approval playbook escalates to the webhook after 10
    minutes and leaves two steps to people."""
    config = remediation_config(tmp_path, *standins)
    changes = {
        "escalation_time": timedelta(minutes=10),
        "escalate_to": "hook",
        "manual_actions": ["review recent deployments", "check the feature store"],
    }
    playbooks = [
        p.model_copy(update=changes) if p.name == "quality" else p for p in config.remediation.playbooks
    ]
    return config.model_copy(
        update={"remediation": config.remediation.model_copy(update={"playbooks": playbooks})}
    )


def test_nobody_acknowledging_in_time_pages_the_escalation_target_once(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    _kube, http, _smtp = standins
    config = on_call_config(tmp_path, standins)
    incident_id = quality_incident(store, config)
    handle_incident(store, config, incident_id, None)
    assert escalate_unacknowledged(store, config, T0 + timedelta(minutes=9)) == {}
    http.fail_next("/hook", 500)
    failed = escalate_unacknowledged(store, config, T0 + timedelta(minutes=11))
    assert failed[incident_id].startswith("failed: ")  # the claim is given back
    due = T0 + timedelta(minutes=12)
    pages = race(*(lambda: escalate_unacknowledged(store, config, due) for _ in range(3)))
    assert [p for p in pages if p] == [{incident_id: "hook"}]  # of three reconcilers, one pages
    assert escalate_unacknowledged(store, config, due + timedelta(hours=1)) == {}  # once per step
    kinds = [k for k, _ in timeline(store, incident_id)]
    assert kinds.count("escalated") == 1 and kinds.count("escalation_failed") == 1


def test_acknowledging_or_snoozing_holds_the_escalation(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    config = on_call_config(tmp_path, standins)
    acknowledged = quality_incident(store, config, fp="dq-a")
    handle_incident(store, config, acknowledged, None)
    lifecycle.acknowledge(store, acknowledged, "ann")
    lifecycle.resolve(store, acknowledged, "next case", "ann")
    assert escalate_unacknowledged(store, config, T0 + timedelta(minutes=11)) == {}  # acknowledged
    snoozed = quality_incident(store, config, fp="dq-b")
    handle_incident(store, config, snoozed, None)
    lifecycle.snooze(store, snoozed, timedelta(hours=1), "ann")
    assert escalate_unacknowledged(store, config, utcnow()) == {}  # snoozed
    assert escalate_unacknowledged(store, config, utcnow() + timedelta(hours=2)) == {snoozed: "hook"}


def test_the_playbook_s_manual_steps_are_the_incident_s_checklist(
    tmp_path: Path, store: Store, standins: tuple
) -> None:
    config = on_call_config(tmp_path, standins)
    incident_id = quality_incident(store, config)
    handle_incident(store, config, incident_id, None)
    lifecycle.tick(store, incident_id, "check the feature store", "ann", config.manual_actions)
    with pytest.raises(lifecycle.LifecycleError, match="'restart everything' is not on incident"):
        lifecycle.tick(store, incident_id, "restart everything", "ann", config.manual_actions)
    detail = incident_detail(store, incident_id, Sampling.of(config), config.manual_actions)
    assert [(s["step"], s["done_by"]) for s in detail["checklist"]] == [
        ("review recent deployments", None),
        ("check the feature store", "ann"),
    ]


def test_muting_silences_the_incident_s_alerts_until_alertmanager_says_they_resolved(
    alertmanager: str, store: Store, example_config: WatchkeeperConfig
) -> None:
    labels = {"alertname": "ModelErrorBurst", "model_name": "credit_approval", "severity": "critical"}
    started = utcnow()
    httpx.post(f"{alertmanager}/api/v2/alerts", json=[{"labels": labels, "startsAt": started.isoformat()}])
    [held] = wait_until(lambda: httpx.get(f"{alertmanager}/api/v2/alerts").json(), "Alertmanager to hold it")
    notification = {  # what Alertmanager's webhook sends for it
        "version": "4",
        "groupKey": '{}:{alertname="ModelErrorBurst"}',
        "status": "firing",
        "receiver": "watchkeeper",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {},
                "startsAt": held["startsAt"],
                "fingerprint": held["fingerprint"],
            }
        ],
    }
    store_notification(store, WebhookNotification.model_validate(notification), notification)
    [incident_id] = correlate_pending_alerts(store, example_config).opened
    with LiveService(example_config, store, alertmanager_url=alertmanager) as service:
        muted = httpx.post(f"{service.url}/v1/incidents/{incident_id}/mute")
        assert muted.status_code == 200, muted.text
        assert muted.json() == {
            "incident": incident_id,
            "event": "muted",
            "by": "anonymous (loopback)",
            "silences": 1,
        }
        twice = httpx.post(f"{service.url}/v1/incidents/{incident_id}/mute")
        assert twice.status_code == 409 and "already muted by anonymous (loopback)" in twice.json()["error"]
    [silenced] = httpx.get(f"{alertmanager}/api/v2/alerts").json()
    assert silenced["status"]["state"] == "suppressed" and len(silenced["status"]["silencedBy"]) == 1
    settle = lambda: correlate_pending_alerts(store, example_config)  # noqa: E731
    still = keep_mutes(store, alertmanager, 5, settle)
    assert still == {"resolved_alerts": [], "muted_more": [], "unmuted": []}  # still firing
    # Another alert of the model joins the muted incident: it is silenced too.
    joiner = {**labels, "alertname": "ModelErrorRateHigh", "severity": "warning"}
    httpx.post(f"{alertmanager}/api/v2/alerts", json=[{"labels": joiner, "startsAt": started.isoformat()}])

    def the_joiner() -> list[dict]:
        return [a for a in httpx.get(f"{alertmanager}/api/v2/alerts").json() if a["labels"] == joiner]

    [held_too] = wait_until(the_joiner, "Alertmanager to hold the joiner")
    late_alert = {**notification["alerts"][0], "labels": joiner, "fingerprint": held_too["fingerprint"]}
    late = {**notification, "alerts": [late_alert]}
    store_notification(store, WebhookNotification.model_validate(late), late)
    assert correlate_pending_alerts(store, example_config).updated == [incident_id]
    assert keep_mutes(store, alertmanager, 5, settle)["muted_more"] == [incident_id]
    assert all(a["status"]["silencedBy"] for a in httpx.get(f"{alertmanager}/api/v2/alerts").json())
    # They resolve while silenced: Alertmanager tells no webhook, so Watchkeeper asks it.
    ended = [
        {"labels": each, "startsAt": held["startsAt"], "endsAt": utcnow().isoformat()}
        for each in (labels, joiner)
    ]
    httpx.post(f"{alertmanager}/api/v2/alerts", json=ended)
    wait_until(lambda: not httpx.get(f"{alertmanager}/api/v2/alerts").json(), "Alertmanager to resolve them")
    done = keep_mutes(store, alertmanager, 5, settle)
    assert done["unmuted"] == [incident_id] and len(done["resolved_alerts"]) == 2
    with store.reading() as session:
        assert session.get(Incident, incident_id).status == "resolved"
    silence_id = silenced["status"]["silencedBy"][0]
    assert httpx.get(f"{alertmanager}/api/v2/silence/{silence_id}").json()["status"]["state"] == "expired"
    kinds = [k for k, _ in timeline(store, incident_id)]
    assert kinds[kinds.index("muted") :] == ["muted", "alert_joined", "muted_more", "resolved", "unmuted"]


def test_muting_without_alertmanager_says_so_and_mutes_nothing(
    service: LiveService, store: Store, example_config: WatchkeeperConfig
) -> None:
    incident_id = opened_incident(store, example_config)
    refused = httpx.post(f"{service.url}/v1/incidents/{incident_id}/mute")
    assert refused.status_code == 409 and "no Alertmanager is configured" in refused.json()["error"]


def test_a_reconciler_does_not_silence_again_what_a_mute_in_progress_is_silencing(
    store: Store, example_config: WatchkeeperConfig
) -> None:
    incident_id = opened_incident(store, example_config)
    [(fingerprint, _labels)] = lifecycle.claim_mute(store, incident_id, "ann", timedelta(minutes=5))
    assert lifecycle.unsilenced_members(store) == {incident_id: [(fingerprint, _labels)]}
    assert not lifecycle.lease_mute(store, incident_id, utcnow(), timedelta(minutes=1))  # ann's, for now
    lifecycle.record_mute(store, incident_id, "ann", {fingerprint: "silence-1"})
    assert lifecycle.unsilenced_members(store) == {}
    with pytest.raises(lifecycle.LifecycleError, match="already muted by ann"):
        lifecycle.claim_mute(store, incident_id, "ben", timedelta(minutes=5))


def test_a_silence_made_by_a_run_that_died_before_recording_it_is_expired_with_the_incident(
    alertmanager: str, store: Store, example_config: WatchkeeperConfig
) -> None:
    labels = {"alertname": "ModelErrorBurst", "model_name": "credit_approval", "severity": "critical"}
    httpx.post(f"{alertmanager}/api/v2/alerts", json=[{"labels": labels}])
    [held] = wait_until(lambda: httpx.get(f"{alertmanager}/api/v2/alerts").json(), "Alertmanager to hold it")
    fired = {"status": "firing", "labels": labels, "annotations": {}, "startsAt": held["startsAt"]}
    body = {
        "version": "4",
        "groupKey": "g",
        "status": "firing",
        "receiver": "watchkeeper",
        "alerts": [{**fired, "fingerprint": held["fingerprint"]}],
    }
    store_notification(store, WebhookNotification.model_validate(body), body)
    [incident_id] = correlate_pending_alerts(store, example_config).opened
    alerts = lifecycle.claim_mute(store, incident_id, "ann", timedelta(minutes=5))
    [orphan] = create_silences(
        alertmanager, alerts, "ann", f"{comment_of(incident_id)}muted by ann", 5
    ).values()
    # ... and the run dies here: nothing recorded. The alert resolves while silenced.
    ended = [{"labels": labels, "startsAt": held["startsAt"], "endsAt": utcnow().isoformat()}]
    httpx.post(f"{alertmanager}/api/v2/alerts", json=ended)
    wait_until(lambda: not httpx.get(f"{alertmanager}/api/v2/alerts").json(), "Alertmanager to resolve it")
    done = keep_mutes(store, alertmanager, 5, lambda: correlate_pending_alerts(store, example_config))
    assert done["unmuted"] == [incident_id]
    assert httpx.get(f"{alertmanager}/api/v2/silence/{orphan}").json()["status"]["state"] == "expired"
    assert keep_mutes(store, alertmanager, 5, lambda: None)["unmuted"] == []  # once
