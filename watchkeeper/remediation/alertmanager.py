"""Alertmanager asked, at the last moment before an action runs, whether its alert is now
silenced or inhibited."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from watchkeeper.notifications.calls import tls_context
from watchkeeper.store.schema import Alert


@dataclass(frozen=True)
class SilenceCheck:
    """What Alertmanager says of an alert now: why to hold back, or a note that it could not say."""

    silenced: str | None = None
    note: str | None = None


def silence_check(alertmanager_url: str | None, alert: Alert | None, timeout: float) -> SilenceCheck:
    """Ask Alertmanager (`GET /api/v2/alerts`) whether the alert is now silenced or inhibited: an
    operator often silences a deploy's alerts after they were first sent."""
    if not alertmanager_url or alert is None:
        return SilenceCheck()
    name = alert.alertname.replace("\\", "\\\\").replace('"', '\\"')
    try:
        response = httpx.get(
            f"{alertmanager_url.rstrip('/')}/api/v2/alerts",
            params={"filter": f'alertname="{name}"'},
            timeout=timeout,
            verify=tls_context(),
        )
        response.raise_for_status()
        listed = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return SilenceCheck(
            note=f"Alertmanager at {alertmanager_url} could not be asked about silences "
            f"({type(exc).__name__}); acted without knowing"
        )
    for candidate in listed if isinstance(listed, list) else []:
        if candidate.get("fingerprint") != alert.fingerprint:
            continue
        status = candidate.get("status") or {}
        if status.get("silencedBy"):
            return SilenceCheck(
                silenced=f"the alert is silenced in Alertmanager ({', '.join(status['silencedBy'])})"
            )
        if status.get("inhibitedBy"):
            return SilenceCheck(
                silenced=f"the alert is inhibited in Alertmanager (by {', '.join(status['inhibitedBy'])})"
            )
    return SilenceCheck()
