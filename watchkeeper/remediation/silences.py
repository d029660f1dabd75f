"""Muting an incident until it resolves, with Alertmanager silences (its API v2).

Alertmanager keeps no incident, so it cannot mute "until resolved" itself. Watchkeeper silences
each firing alert of the incident (every label matched exactly), which also stops Alertmanager's
own receivers from repeating them. A silenced alert's resolution reaches no webhook, so the
reconciler asks Alertmanager which alerts are still active (`GET /api/v2/alerts`), resolves the
members that are not, and expires the silences once the incident is resolved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx

from watchkeeper.config import WatchkeeperConfig
from watchkeeper.notifications.calls import tls_context
from watchkeeper.store import Store, lifecycle
from watchkeeper.times import utcnow

# A silence outlives any incident Watchkeeper watches; it is expired when the incident resolves.
LONGEST_MUTE = timedelta(days=7)
# How long muting may take before a reconciler may silence the incident's alerts itself.
MUTE_LEASE = timedelta(minutes=5)


class AlertmanagerUnavailable(Exception):
    """Alertmanager could not be asked: nothing was muted (or nothing was learned); retry later."""


def _call(method: str, url: str, timeout: float, **kwargs: Any) -> Any:
    try:
        response = httpx.request(method, url, timeout=timeout, verify=tls_context(), **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None
    except (httpx.HTTPError, ValueError) as exc:
        raise AlertmanagerUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}"[:500]) from exc


def create_silences(
    base: str, alerts: list[tuple[str, dict[str, str]]], by: str, comment: str, timeout: float
) -> dict[str, str]:
    """One silence per alert, matching all its labels; fingerprint -> silence id. All or none: on a
    failure, the silences already made are expired."""
    now = utcnow()
    made: dict[str, str] = {}
    try:
        for fingerprint, labels in alerts:
            body = {
                "matchers": [
                    {"name": k, "value": v, "isRegex": False, "isEqual": True}
                    for k, v in sorted(labels.items())
                ],
                "startsAt": now.isoformat(),
                "endsAt": (now + LONGEST_MUTE).isoformat(),
                "createdBy": by,
                "comment": comment,
            }
            made[fingerprint] = _call("POST", f"{base}/api/v2/silences", timeout, json=body)["silenceID"]
    except (AlertmanagerUnavailable, KeyError, TypeError) as exc:
        expire_silences(base, list(made.values()), timeout)
        raise AlertmanagerUnavailable(str(exc)) from exc
    return made


def expire_silences(base: str, silence_ids: list[str], timeout: float) -> list[str]:
    """Expire each silence; returns those Alertmanager still holds active (it could not be asked)."""
    left = []
    for silence_id in silence_ids:
        try:
            _call("DELETE", f"{base}/api/v2/silence/{silence_id}", timeout)
        except AlertmanagerUnavailable:
            state = _state(base, silence_id, timeout)
            if state not in ("expired", "gone"):
                left.append(silence_id)
    return left


def _state(base: str, silence_id: str, timeout: float) -> str:
    try:
        return str(_call("GET", f"{base}/api/v2/silence/{silence_id}", timeout)["status"]["state"])
    except AlertmanagerUnavailable as exc:
        return "gone" if "404" in str(exc) else "unknown"


def active_fingerprints(base: str, timeout: float) -> set[str]:
    """Every alert Alertmanager holds active now (silenced or not): a resolved one is not listed."""
    listed = _call("GET", f"{base}/api/v2/alerts", timeout)
    return {a["fingerprint"] for a in listed if isinstance(a, dict) and "fingerprint" in a}


def mute(
    store: Store, config: WatchkeeperConfig, base: str, incident_id: int, by: str
) -> lifecycle.Transition:
    """Silence the incident's firing alerts until it resolves; only after winning its mute claim."""
    timeout = config.remediation.action_timeout.total_seconds()
    alerts = lifecycle.claim_mute(store, incident_id, by, MUTE_LEASE)
    comment = f"{comment_of(incident_id)}muted until resolved by {by}"
    try:
        made = create_silences(base.rstrip("/"), alerts, by, comment, timeout)
    except AlertmanagerUnavailable:
        lifecycle.release_mute(store, incident_id)
        raise
    return lifecycle.record_mute(store, incident_id, by, made)


def silence_joiners(store: Store, base: str, timeout: float, now: datetime) -> list[int]:
    """Silence the alerts that joined muted incidents after they were muted; returns the incidents."""
    muted = []
    for incident_id, alerts in lifecycle.unsilenced_members(store).items():
        if not lifecycle.lease_mute(store, incident_id, now, timedelta(seconds=timeout * len(alerts) + 60)):
            continue
        made: dict[str, str] = {}
        # Alertmanager unreachable: the lease is given back with nothing made, to be tried again.
        with contextlib.suppress(AlertmanagerUnavailable):
            comment = f"{comment_of(incident_id)}is muted"
            made = create_silences(base, alerts, "watchkeeper", comment, timeout)
        lifecycle.add_silences(store, incident_id, made)
        if made:
            muted.append(incident_id)
    return muted


def keep_mutes(
    store: Store, base: str | None, timeout: float, settle: Callable[[], object], now: datetime | None = None
) -> dict[str, list[int]]:
    """What the reconciler does for muted incidents: resolve the members Alertmanager no longer
    holds active, let correlation resolve the incidents left quiet (`settle`), silence the alerts
    that joined them since, and expire the silences of muted incidents that resolved. Returns what
    it did."""
    done: dict[str, list[int]] = {"resolved_alerts": [], "muted_more": [], "unmuted": []}
    if not base:
        return done
    base = base.rstrip("/")
    watched = lifecycle.muted_members(store)
    if watched:
        try:
            active = active_fingerprints(base, timeout)
        except AlertmanagerUnavailable:
            return done
        gone = [alert_id for alert_id, fingerprint in watched if fingerprint not in active]
        done["resolved_alerts"] = lifecycle.resolve_alerts(store, gone, now or utcnow())
        if done["resolved_alerts"]:
            settle()
    done["muted_more"] = silence_joiners(store, base, timeout, now or utcnow())
    for incident_id, recorded in lifecycle.silences_to_expire(store).items():
        try:
            silence_ids = sorted(set(recorded) | made_for(base, incident_id, timeout))
        except AlertmanagerUnavailable:
            continue
        if not expire_silences(base, silence_ids, timeout):
            lifecycle.record_unmute(store, incident_id, silence_ids)
            done["unmuted"].append(incident_id)
    return done


def comment_of(incident_id: int) -> str:
    """How each silence of an incident's begins: a silence made by a run that died before
    recording it is still found, and expired with the others."""
    return f"Watchkeeper: incident {incident_id} "


def made_for(base: str, incident_id: int, timeout: float) -> set[str]:
    """The active silences Alertmanager holds for the incident, recorded or not."""
    prefix = comment_of(incident_id)
    return {
        s["id"]
        for s in _call("GET", f"{base}/api/v2/silences", timeout)
        if str(s.get("comment", "")).startswith(prefix) and s.get("status", {}).get("state") == "active"
    }
